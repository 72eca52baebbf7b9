"""gpupower operator: plans GPU power budgets and applies them."""

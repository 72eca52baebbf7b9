"""gpupower API: the GpuPowerBudget models, the operator/agent contract and label selectors."""

"""gpupower node agent: applies planned per-GPU power caps through NVML."""

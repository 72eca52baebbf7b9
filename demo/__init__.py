"""The gpupower demo: the real operator and agents on a real local control plane with simulated GPU nodes."""

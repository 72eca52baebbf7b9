"""The pure decisions: plain values in, plain values out; no I/O, no clock, no Kubernetes types."""

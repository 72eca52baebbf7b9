"""The adapters to the outside world: the Kubernetes client and Prometheus, each behind a small interface."""

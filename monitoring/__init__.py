"""gpupower's monitoring artifacts: the Grafana dashboard (generated from :mod:`monitoring.dashboard`) and
the PrometheusRule (generated from the plain rules file). ``python -m monitoring`` writes them into
``manifests/monitoring/``."""

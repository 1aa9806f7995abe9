"""Alerting as code: the pipeline's Prometheus rules and the Alertmanager routing, from the config."""

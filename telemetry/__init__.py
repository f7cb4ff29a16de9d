"""Observability: JSON logs, Prometheus metrics, systemd notify."""

"""The node service around the engine: process life (signals, reload, sd_notify), the audit log,
Prometheus metrics and the expiry watch."""

"""Per-process observability: /healthz, /jsonstats, /metrics."""

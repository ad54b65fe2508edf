"""Operations: health checks, Prometheus metrics, the HTTP status endpoint."""

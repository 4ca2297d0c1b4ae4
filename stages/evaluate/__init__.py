"""evaluate: verification of one model (docs/metrics.md): uncertainty and health so far."""

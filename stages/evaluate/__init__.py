"""evaluate: verification of one model (VERIFY.md): uncertainty and health so far."""

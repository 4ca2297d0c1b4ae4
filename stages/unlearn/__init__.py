"""unlearn: remove the forget set from the oracle with a chosen method, watching model health at every step."""

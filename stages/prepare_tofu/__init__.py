"""prepare-tofu: the TOFU benchmark's splits as records with probes, so finetune, unlearn and evaluate run on it."""

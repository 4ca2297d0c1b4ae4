"""finetune: LoRA fine-tuning of the oracle (full set) and the retain model (full minus forget)."""

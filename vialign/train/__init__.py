"""Training: SFT with VIT/LIT label masks (stages, freezing, LoRA), LM pretraining, DPO."""

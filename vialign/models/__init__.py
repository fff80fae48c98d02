"""Models: load real HF LLaVA checkpoints, build tiny ones, tokenizers."""

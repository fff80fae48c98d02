"""vialign: curate, align, tune and evaluate LLaVA-style visual instruction data and models."""

__version__ = "0.1.0"

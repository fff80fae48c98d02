"""vialign: curate, align, tune and evaluate LLaVA-style visual instruction data and models."""

import os

__version__ = "0.1.0"

HUB_KERNELS_ENV = "VIALIGN_HUB_KERNELS"


def keep_hub_kernels_off() -> None:
    """Nothing downloads at run time: transformers would otherwise fetch kernels from the Hub (and stop on an
    offline node) whenever the `kernels` package is installed. `VIALIGN_HUB_KERNELS=1` leaves the choice to
    transformers (`USE_HUB_KERNELS`)."""
    if os.environ.get(HUB_KERNELS_ENV) != "1":
        os.environ["USE_HUB_KERNELS"] = "NO"


keep_hub_kernels_off()

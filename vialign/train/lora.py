"""The LoRA fast path: with dropout 0, an adapted linear layer adds its low-rank update inside one
`addmm` (result + scaling · (x·Aᵀ)·Bᵀ) instead of PEFT's matmul, scaling multiply and add, each a pass
over the layer's whole output. Layers the fast path does not cover (dropout, DoRA and other variants,
LoRA biases, several active adapters, merged or disabled adapters) keep PEFT's own forward."""

from __future__ import annotations

import types
from typing import Any

import torch


def fused_lora_forward(self: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    active = self.active_adapters
    if args or kwargs or self.disable_adapters or self.merged or len(active) != 1:
        return type(self).forward(self, x, *args, **kwargs)
    name = active[0]
    result = self.base_layer(x)
    down = self.lora_A[name](x)
    up = self.lora_B[name].weight
    fused = torch.addmm(
        result.reshape(-1, result.shape[-1]),
        down.reshape(-1, down.shape[-1]),
        up.t(),
        alpha=self.scaling[name],
    )
    return fused.view(result.shape)


def fast_path_applies(module: Any) -> bool:
    from peft.tuners.lora import Linear as LoraLinear

    if not isinstance(module, LoraLinear) or not isinstance(module.base_layer, torch.nn.Linear):
        return False
    return (
        not module.fan_in_fan_out
        and not module.lora_variant
        and all(isinstance(d, torch.nn.Identity) for d in module.lora_dropout.values())
        and all(b.bias is None for b in module.lora_B.values())
    )


def use_fused_lora(model: torch.nn.Module) -> int:
    """Give every LoRA layer the fast path covers the fused forward; returns how many it covers."""
    covered = 0
    for module in model.modules():
        if fast_path_applies(module):
            module.forward = types.MethodType(fused_lora_forward, module)
            covered += 1
    return covered

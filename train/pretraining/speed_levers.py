# Copyright 2026 The dbeta authors. Licensed under the Apache License, Version 2.0.
"""Opt-in speed levers of `train/pretrain.py` (issue 12), shared with `benchmarks/pretrain_levers.py`.

- `compile_repeated_layers`: regional `torch.compile` of the repeated transformer layers (ECG
  encoder layers, T5 blocks, fusion layers, MEM decoder layers), not of the whole model, so that
  compilation stays short (instances of one class share their compiled code) and the parts with
  data-dependent shapes (MEM masking, MLM selection, the loss bookkeeping) stay eager. The
  compilation is in place (`nn.Module.compile`): parameter names, checkpoints and the exported
  Hub folder are unchanged.
- `build_adamw`: the paper's AdamW, optionally with PyTorch's fused kernel (`fused=True`).

Static text lengths (bucketed padding) live in the collator (`PretrainingBatchSettings`).
"""

from __future__ import annotations

import torch

#: What `compile_repeated_layers` compiles, as attribute paths from `DBetaForPreTraining`
#: (`dbeta.` prefix) or from `DBetaModel`.
REPEATED_LAYER_LISTS = (
    "ecg_model.encoder.layers",
    "text_model.t5.encoder.block",
    "text_fusion_layers",
    "ecg_fusion_layers",
)
MEM_DECODER_LAYERS = "mem_head.layers"

#: Compiled-code variants dynamo may keep per code object. Every layer class here derives from
#: transformers' `GradientCheckpointingLayer`, whose wrapper is one code object for all of them:
#: (ECG layer, first / later T5 block, text / ECG fusion layer) x (static, dynamic shapes) x
#: (train, eval) exceeds torch's default of 8, after which the extra variants would silently run eager.
RECOMPILE_LIMIT = 64


def _attribute(root: torch.nn.Module, path: str):
    for name in path.split("."):
        root = getattr(root, name)
    return root


def compile_repeated_layers(model: torch.nn.Module, backend: str = "inductor", mode: str | None = None, dynamic: bool | None = None) -> int:
    """Compile, in place, every repeated transformer layer of a D-BETA model
    (`DBetaForPreTraining` or `DBetaModel`); returns how many modules were compiled.

    `backend` and `mode` go to `torch.compile` ("reduce-overhead" adds CUDA graphs, which pay off
    with static text lengths: `--text_length_buckets`). Text lengths that vary from batch to batch
    trigger one recompilation with dynamic shapes (torch's automatic dynamic shapes), then none.
    """
    import torch._dynamo

    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    base = getattr(model, "dbeta", model)
    layers = [layer for path in REPEATED_LAYER_LISTS for layer in _attribute(base, path)]
    if hasattr(model, "mem_head"):
        layers.extend(_attribute(model, MEM_DECODER_LAYERS))
    options = {"backend": backend, "dynamic": dynamic}
    if mode is not None:
        options["mode"] = mode
    for layer in layers:
        layer.compile(**options)
    return len(layers)


def build_adamw(parameter_groups, learning_rate: float, betas: tuple[float, float], eps: float, fused: bool = False) -> torch.optim.AdamW:
    """`torch.optim.AdamW` over `parameter_groups`; with `fused`, PyTorch's fused kernel (one kernel
    for all parameters of a device, instead of the default multi-tensor "foreach" path)."""
    return torch.optim.AdamW(parameter_groups, lr=learning_rate, betas=betas, eps=eps, fused=True if fused else None)


def check_fused_adamw_devices(model: torch.nn.Module) -> None:
    """Raise a clear error when `--fused_adamw` meets parameters its kernel does not support (the
    optimizer itself would only fail at its first step)."""
    from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

    supported = set(_get_fused_kernels_supported_devices())
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        if parameter.device.type not in supported or not parameter.is_floating_point():
            raise ValueError(
                f"--fused_adamw: torch {torch.__version__} has no fused AdamW for parameter {name!r} "
                f"({parameter.dtype} on {parameter.device.type}; fused kernels exist on {sorted(supported)}). "
                "Drop --fused_adamw to use the default AdamW."
            )

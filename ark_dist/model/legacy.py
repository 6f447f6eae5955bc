"""The layout of timm 0.5.4 and the official Swin release, which Ark's own code and
BenchmarkTransformers pin: patch merging at the END of stage i (today's timm: the start of stage
i+1), a `relative_position_index` buffer in every block and an `attn_mask` in every shifted block,
and Ark's heads numbered `omni_heads.<i>`. `export --layout legacy` writes it, so those codes load
an ark-dist teacher with strict=True and nothing missed; timm's own `checkpoint_filter_fn` turns it
back into today's layout (tests/test_export.py checks the round trip tensor for tensor)."""

from __future__ import annotations

import re

import torch

HEAD = re.compile(r"omni_heads\.([^.]+)\.(.+)")


def legacy_backbone(backbone: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A timm Swin's state in the 0.5.4 / official layout: each `layers.<i>.downsample.*` one stage
    back, plus the blocks' position-index and shift-mask buffers as the module computed them."""
    out = {}
    for key, tensor in backbone.state_dict().items():
        merge = re.fullmatch(r"layers\.(\d+)\.downsample\.(.+)", key)
        if merge:  # the same tensor: the channel order of patch merging did not change
            key = f"layers.{int(merge[1]) - 1}.downsample.{merge[2]}"
        out[key] = tensor.detach().clone()
    if not hasattr(backbone, "layers"):
        raise ValueError(f"{type(backbone).__name__}: the legacy layout is Swin's (a model with .layers of blocks)")
    for stage, layer in enumerate(backbone.layers):
        for index, block in enumerate(layer.blocks):
            prefix = f"layers.{stage}.blocks.{index}."
            out[prefix + "attn.relative_position_index"] = block.attn.relative_position_index.detach().clone()
            mask = getattr(block, "attn_mask", None)
            if mask is not None:  # 0.5.4 registers None for an unshifted block: no key
                out[prefix + "attn_mask"] = mask.detach().clone()
    return out


def legacy_tensors(model, datasets: list[str]) -> dict[str, torch.Tensor]:
    """An `ArkModel` as Ark's code keeps it: the legacy backbone, `projector.*`, and the heads
    numbered in `datasets` order (`omni_heads.<i>.*`)."""
    out = legacy_backbone(model.backbone)
    for key, tensor in model.state_dict().items():
        head = HEAD.fullmatch(key)
        if key.startswith("projector."):
            out[key] = tensor.detach().clone()
        elif head:
            out[f"omni_heads.{datasets.index(head[1])}.{head[2]}"] = tensor.detach().clone()
    return out


def current_tensors(tensors: dict[str, torch.Tensor], *, backbone: torch.nn.Module,
                    datasets: list[str]) -> dict[str, torch.Tensor]:
    """The inverse, for loading a legacy ark-dist export: timm's own converter for the backbone,
    the numbered heads named again."""
    from timm.models.swin_transformer import checkpoint_filter_fn

    body = {k: v for k, v in tensors.items() if not k.startswith(("projector.", "omni_heads."))}
    out = dict(checkpoint_filter_fn(body, backbone))
    for key, tensor in tensors.items():
        numbered = re.fullmatch(r"omni_heads\.(\d+)\.(.+)", key)
        if key.startswith("projector."):
            out[key] = tensor
        elif numbered:
            out[f"omni_heads.{datasets[int(numbered[1])]}.{numbered[2]}"] = tensor
    return out

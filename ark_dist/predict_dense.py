"""The box and mask heads of a Foundation X release (`ReleasedModel.detect`, `.segment`): rebuilt
from config.json's `ark_dist.dense` section around the backbone timm loaded, and their outputs
mapped from the model's input (the centre crop of the square canvas) back to the image's pixels."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def build(config: dict, *, backbone: torch.nn.Module, tensors: dict[str, torch.Tensor]):
    """The release's `FoundationModel`, its backbone the given one (no second copy of its weights),
    every other tensor loaded from the heads file; None for a release without box or mask heads."""
    from ark_dist.model.config import DenseConfig, ModelConfig
    from ark_dist.model.foundation import FoundationModel

    ark = config["ark_dist"]
    dense = ark.get("dense")
    if not dense:
        return None
    model_config = ModelConfig(backbone=config["architecture"], backbone_kwargs=dict(config.get("model_args", {})),
                               projector=ark["projector"], projector_dim=int(ark["projector_dim"]),
                               dense=DenseConfig(**dense["config"]))
    model = FoundationModel(model_config, classes={n: len(v) for n, v in ark["labels"].items()},
                            boxes={n: len(v) for n, v in dense["boxes"].items()},
                            masks={n: len(v) for n, v in dense["masks"].items()})
    model.backbone = backbone
    result = model.load_state_dict(tensors, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith("backbone.")]
    if missing or result.unexpected_keys:
        raise ValueError(f"ark_heads.safetensors does not match its config.json's heads: missing {missing[:3]}, "
                         f"unexpected {result.unexpected_keys[:3]}")
    return model.eval()


def to_original(boxes: torch.Tensor, *, size: tuple[int, int], image_size: int, crop: float) -> torch.Tensor:
    """(N, 4) xyxy in model-input pixels -> the image's own pixels (w, h = size): the input is the
    centre `crop` of the canvas the whole image was squashed onto."""
    width, height = size
    scale = boxes.new_tensor([width, height, width, height])
    return ((boxes / image_size) * crop + (1 - crop) / 2) * scale


def mask_to_original(probability: torch.Tensor, *, size: tuple[int, int], crop: float) -> np.ndarray:
    """(S, S) probabilities over the model's input -> (h, w) over the image, 0 outside the crop."""
    width, height = size
    inner = (max(1, round(crop * height)), max(1, round(crop * width)))
    top, left = round((1 - crop) / 2 * height), round((1 - crop) / 2 * width)
    out = np.zeros((height, width), np.float32)
    resized = F.interpolate(probability[None, None].float(), size=inner, mode="bilinear", align_corners=False)[0, 0]
    out[top:top + inner[0], left:left + inner[1]] = resized.numpy()[:height - top, :width - left]
    return out

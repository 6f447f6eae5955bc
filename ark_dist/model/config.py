"""The `model` section: backbone, projector, where pretrained weights come from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass(kw_only=True)
class DenseConfig:
    """Foundation X's localization and segmentation heads (ark_dist/model/foundation.py)."""

    loc_channels: int = 256  # width of the shared FPN (the localization encoder) and each FCOS tower; x32
    loc_convs: int = 4  # conv layers in each dataset's FCOS towers
    loc_score_threshold: float = 0.05  # detections kept for evaluation (low: mAP ranks them all)
    loc_nms_threshold: float = 0.6  # IoU above which NMS drops the lower-scored box of a class
    loc_detections: int = 100  # boxes kept per image (COCO's maxDets)
    seg_channels: int = 128  # width of the shared UPerNet decoder (the reference's 128)

    def validate(self) -> None:
        for key in ("loc_channels", "loc_convs", "loc_detections", "seg_channels"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be at least 1")
        if self.loc_channels % 32:
            raise ValueError(f"loc_channels={self.loc_channels}: a multiple of 32 (FCOS's towers use GroupNorm(32))")
        for key in ("loc_score_threshold", "loc_nms_threshold"):
            if not 0 <= getattr(self, key) <= 1:
                raise ValueError(f"{key} must be in [0, 1]")


@dataclass(kw_only=True)
class ModelConfig:
    """A timm backbone with pooled features -> projector -> one linear head per dataset."""

    backbone: str = "swin_base_patch4_window7_224"  # any timm model name with pooled features
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)  # e.g. a tiny test config, drop_path_rate
    pretrained: str | None = None  # local path or s3:// URL: official Swin, timm, or an Ark/ark-dist checkpoint
    projector: Literal["linear", "mlp", "none"] = "linear"  # Ark: Linear(1024 -> 1376)
    projector_dim: int = 1376  # projector output width (ignored when projector is none)
    dense: DenseConfig = field(default_factory=DenseConfig)  # Foundation X's box and mask heads
    # Activation checkpointing: the backbone keeps only each block's input and recomputes the rest
    # in the backward pass (timm's set_grad_checkpointing): about a third more compute for a
    # larger micro-batch per GPU (`python launch.py bench memory` measures the trade).
    grad_checkpointing: bool = False  # recompute the backbone's block activations in backward (less memory)

    def validate(self) -> None:
        if self.projector != "none" and self.projector_dim < 1:
            raise ValueError("projector_dim must be positive")
        self.dense.validate()

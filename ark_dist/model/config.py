"""The `model` section: backbone, projector, where pretrained weights come from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass(kw_only=True)
class ModelConfig:
    """A timm backbone with pooled features -> projector -> one linear head per dataset."""

    backbone: str = "swin_base_patch4_window7_224"  # any timm model name with pooled features
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)  # e.g. a tiny test config, drop_path_rate
    pretrained: str | None = None  # local path or s3:// URL: official Swin, timm, or an Ark/ark-dist checkpoint
    projector: Literal["linear", "mlp", "none"] = "linear"  # Ark: Linear(1024 -> 1376)
    projector_dim: int = 1376  # projector output width (ignored when projector is none)

    def validate(self) -> None:
        if self.projector != "none" and self.projector_dim < 1:
            raise ValueError("projector_dim must be positive")

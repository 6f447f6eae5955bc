"""Ark's network: backbone (pooled features) -> projector -> a linear head per dataset.

Knows nothing of Ray, DeepSpeed or torch.distributed: distribution is applied elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import timm
import torch
from torch import nn

from ark_dist.model.config import ModelConfig


@dataclass
class ArkOutput:
    projection: torch.Tensor  # (B, projector_dim): what the consistency loss compares
    logits: dict[str, torch.Tensor]  # dataset -> (B, num_labels)


class ArkModel(nn.Module):
    """Heads are keyed by dataset name in the configured order (`omni_heads`, as in Ark)."""

    def __init__(self, config: ModelConfig, *, heads: dict[str, int]):
        super().__init__()
        self.config = config
        self.backbone = timm.create_model(config.backbone, pretrained=False, num_classes=0, **config.backbone_kwargs)
        self.backbone.set_grad_checkpointing(config.grad_checkpointing)
        width = self.backbone.num_features
        if config.projector == "linear":
            self.projector, width = nn.Linear(width, config.projector_dim), config.projector_dim
        elif config.projector == "mlp":
            self.projector = nn.Sequential(nn.Linear(width, config.projector_dim), nn.ReLU(inplace=True),
                                           nn.Linear(config.projector_dim, config.projector_dim))
            width = config.projector_dim
        else:
            self.projector = nn.Identity()
        self.omni_heads = nn.ModuleDict({name: nn.Linear(width, size) for name, size in heads.items()})

    def forward(self, images: torch.Tensor, heads: list[str] | None = None) -> ArkOutput:
        """images: (B, 3, H, W). Computes the named heads (default: all; under ZeRO every rank
        must run the same ones)."""
        projection = self.projector(self.backbone(images))  # (B, projector_dim)
        names = heads if heads is not None else list(self.omni_heads)
        return ArkOutput(projection=projection, logits={n: self.omni_heads[n](projection) for n in names})

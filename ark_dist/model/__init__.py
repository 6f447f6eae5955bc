"""Ark's network (timm backbone, projector, per-dataset heads) and weight loading; no distribution."""

from ark_dist.model.ark import ArkModel, ArkOutput
from ark_dist.model.config import ModelConfig
from ark_dist.model.weights import load_pretrained, read_state_dict

__all__ = ["ArkModel", "ArkOutput", "ModelConfig", "load_pretrained", "read_state_dict"]

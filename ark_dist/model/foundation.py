"""Foundation X's network: one timm Swin backbone and three kinds of head.

    images -> backbone -> pooled (B, F) -> [projector] -> omni_heads[d]       classification
                       -> stages 1-4 (B, C_i, H/4/2^i, W/4/2^i)
                            stages 2-4 -> loc_neck (FPN + P6, P7) -> loc_heads[d] (FCOS)   boxes
                            stages 1-4 -> seg_decoder (UPerNet: PPM + FPN) -> seg_heads[d]  masks

The localization topology is the reference's (one shared encoder, a decoder and output heads per
dataset) with torchvision's FCOS as the decoder: its tower and outputs per dataset, its loss (focal,
GIoU, centre-ness) and its post-processing. The segmentation decoder is segmentation-models-pytorch's
UPerNet decoder on our stages, with a 3x3 head per dataset (the reference's). Attribute names keep
Ark's (`backbone`, `projector`, `omni_heads`), so an Ark export loads through `load_pretrained` as
it does into `ArkModel`, every key reported.

Knows nothing of Ray, DeepSpeed or torch.distributed.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import timm
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.fcos import FCOS, FCOSHead
from torchvision.models.detection.image_list import ImageList
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelP6P7

from ark_dist.model.config import ModelConfig

TASKS = ("cls", "loc", "seg")


@dataclass
class FoundationOutput:
    pooled: torch.Tensor  # (B, F): the backbone's pooled features (classification consistency)
    logits: dict[str, torch.Tensor] = field(default_factory=dict)  # cls: dataset -> (B, K)
    loc: dict | None = None  # loc: FCOS head outputs, anchors and level sizes (`Localizer`)
    masks: torch.Tensor | None = None  # seg: (B, C, H, W) logits at the input size
    features: list[torch.Tensor] = field(default_factory=list)  # what the task's consistency compares
    stages: list[torch.Tensor] = field(default_factory=list)  # the backbone's four stage maps


class _NoBackbone(nn.Module):
    """FCOS insists on a backbone; ours is shared and runs before it (no parameters here)."""

    def __init__(self, out_channels: int):
        super().__init__()
        self.out_channels = out_channels


class Localizer(nn.Module):
    """One dataset's FCOS decoder on the shared neck's levels: torchvision's `FCOSHead` (towers,
    class logits, box regression, centre-ness) and its `FCOS` for matching, loss and decoding."""

    def __init__(self, channels: int, *, num_classes: int, num_levels: int, strides: list[int], config):
        super().__init__()
        anchors = AnchorGenerator(sizes=tuple((s,) for s in strides), aspect_ratios=((1.0,),) * num_levels)
        self.fcos = FCOS(_NoBackbone(channels), num_classes, anchor_generator=anchors,
                         head=FCOSHead(channels, 1, num_classes, num_convs=config.loc_convs),
                         score_thresh=config.loc_score_threshold, nms_thresh=config.loc_nms_threshold,
                         detections_per_img=config.loc_detections)

    def forward(self, levels: list[torch.Tensor], *, image_size: tuple[int, int]) -> dict:
        batch = levels[0].shape[0]
        images = ImageList(levels[0].new_empty(batch, 0, *image_size, dtype=torch.float32), [image_size] * batch)
        # Box regression, decoding and the GIoU loss in fp32: in bf16 a box edge past 128 px is 1 px coarse.
        head = {k: v.float() for k, v in self.fcos.head(levels).items()}
        anchors = self.fcos.anchor_generator(images, [level.float() for level in levels])
        return {"head": head, "anchors": anchors,
                "per_level": [x.shape[2] * x.shape[3] for x in levels], "image_size": image_size}

    def loss(self, out: dict, targets: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """targets: per image {"boxes": (M, 4) xyxy input pixels, "labels": (M,) int64}. Returns
        FCOS's {"classification", "bbox_regression", "bbox_ctrness"}, each a mean over foreground."""
        return self.fcos.compute_loss(targets, out["head"], out["anchors"], out["per_level"])

    @torch.no_grad()
    def detect(self, out: dict) -> list[dict[str, torch.Tensor]]:
        """Per image {"boxes" (N, 4) xyxy input pixels, "scores" (N,), "labels" (N,)} after NMS."""
        split = {k: list(v.split(out["per_level"], dim=1)) for k, v in out["head"].items()}
        anchors = [list(a.split(out["per_level"])) for a in out["anchors"]]
        return self.fcos.postprocess_detections(split, anchors, [out["image_size"]] * len(anchors))


class FoundationModel(nn.Module):
    """Heads keyed by dataset name: `omni_heads` (classification), `loc_heads`, `seg_heads`. A
    dataset may have any of the three; `classes`, `boxes` and `masks` give each one's label count."""

    def __init__(self, config: ModelConfig, *, classes: dict[str, int], boxes: dict[str, int] | None = None,
                 masks: dict[str, int] | None = None):
        super().__init__()
        self.config = config
        dense = config.dense
        self.backbone = timm.create_model(config.backbone, pretrained=False, num_classes=0, **config.backbone_kwargs)
        self.backbone.set_grad_checkpointing(config.grad_checkpointing)
        width, stages = self.backbone.num_features, [i["num_chs"] for i in self.backbone.feature_info]
        reductions = [i["reduction"] for i in self.backbone.feature_info]
        if config.projector == "linear":
            self.projector, width = nn.Linear(width, config.projector_dim), config.projector_dim
        else:
            if config.projector != "none":
                raise ValueError(f"model.projector={config.projector!r}: Foundation X takes 'linear' or 'none'")
            self.projector = nn.Identity()
        self.omni_heads = nn.ModuleDict({name: nn.Linear(width, size) for name, size in classes.items()})
        # Localization: FPN on stages 2-4 (strides 8, 16, 32) plus P6, P7 from P5: five levels.
        self.loc_neck = FeaturePyramidNetwork(stages[1:], dense.loc_channels,
                                              extra_blocks=LastLevelP6P7(dense.loc_channels, dense.loc_channels))
        strides = reductions[1:] + [reductions[-1] * 2, reductions[-1] * 4]
        self.loc_heads = nn.ModuleDict({name: Localizer(dense.loc_channels, num_classes=size, num_levels=len(strides),
                                                        strides=strides, config=dense)
                                        for name, size in (boxes or {}).items()})
        from segmentation_models_pytorch.decoders.upernet.decoder import UPerNetDecoder

        # smp's decoder reads features[2:] of an encoder's [1, 1/2, 1/4, ...] pyramid: two
        # placeholders, then our four stages (1/4 ... 1/32).
        self.seg_decoder = UPerNetDecoder([0, 0, *stages], encoder_depth=5, decoder_channels=dense.seg_channels)
        self.seg_heads = nn.ModuleDict({name: nn.Conv2d(dense.seg_channels, size, 3, padding=1)
                                        for name, size in (masks or {}).items()})

    def stages(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """images (B, 3, H, W) -> (pooled (B, F), the four stages' (B, C_i, H_i, W_i) maps)."""
        final, stages = self.backbone.forward_intermediates(images)
        return self.backbone.forward_head(final, pre_logits=True), stages

    def idle(self, out: FoundationOutput, *, task: str, dataset: str) -> torch.Tensor:
        """0 x the outputs of every part this step leaves unused, computed on two samples of the
        stages pooled to 2 x 2: every parameter then gets an exact zero gradient at every step
        (ZeRO-3 would otherwise keep an unused parameter's last gradient, which AdamW would go on
        applying, where ZeRO 0-2 give it zeros). BatchNorm runs in eval mode here, so its
        statistics stay those of real batches. Add it to the loss."""
        small = [F.adaptive_avg_pool2d(s[:2].detach(), 2) for s in out.stages]
        terms = [] if task == "cls" else [out.pooled.sum()]  # the backbone's final norm feeds only `pooled`
        pooled = self.projector(out.pooled[:2].detach())
        terms += [head(pooled).sum() for name, head in self.omni_heads.items() if (task, name) != ("cls", dataset)]
        levels = list(self.loc_neck(OrderedDict((str(i), x) for i, x in enumerate(small[1:]))).values())
        terms += [v.sum() for name, head in self.loc_heads.items() if (task, name) != ("loc", dataset)
                  for v in head.fcos.head(levels).values()]
        if self.seg_heads:
            training = self.seg_decoder.training
            self.seg_decoder.eval()
            fused = self.seg_decoder([None, None, *small])
            self.seg_decoder.train(training)
            terms += [head(fused).sum() for name, head in self.seg_heads.items() if (task, name) != ("seg", dataset)]
        return 0.0 * sum(terms)

    def every_head(self, images: torch.Tensor, *, task: str) -> dict:
        """Inference: every box head's raw outputs (`task="loc"`, for `Localizer.detect`) or every
        mask head's (B, C, H, W) logits (`"seg"`), by dataset, on one pass of the backbone and the
        shared neck or decoder (`forward` runs one head, as a training step does)."""
        _, stages = self.stages(images)
        if task == "loc":
            levels = list(self.loc_neck(OrderedDict((str(i), s) for i, s in enumerate(stages[1:]))).values())
            return {name: head(levels, image_size=tuple(images.shape[-2:])) for name, head in self.loc_heads.items()}
        if task != "seg":
            raise ValueError(f"every_head: task {task!r} is loc or seg")
        fused = self.seg_decoder([None, None, *stages])  # (B, D, H/4, W/4)
        return {name: F.interpolate(head(fused), size=images.shape[-2:], mode="bilinear", align_corners=False)
                for name, head in self.seg_heads.items()}

    def forward(self, images: torch.Tensor, *, task: str, dataset: str) -> FoundationOutput:
        """One (dataset, task) step's forward: every rank runs the same modules (as ZeRO needs)."""
        pooled, stages = self.stages(images)
        if task == "cls":
            logits = {dataset: self.omni_heads[dataset](self.projector(pooled))}
            return FoundationOutput(pooled=pooled, logits=logits, features=[pooled], stages=stages)
        if task == "loc":
            levels = list(self.loc_neck(OrderedDict((str(i), s) for i, s in enumerate(stages[1:]))).values())
            out = self.loc_heads[dataset](levels, image_size=tuple(images.shape[-2:]))
            return FoundationOutput(pooled=pooled, loc=out, features=levels, stages=stages)
        if task == "seg":
            fused = self.seg_decoder([None, None, *stages])  # (B, D, H/4, W/4)
            masks = F.interpolate(self.seg_heads[dataset](fused), size=images.shape[-2:], mode="bilinear",
                                  align_corners=False)
            return FoundationOutput(pooled=pooled, masks=masks, features=[stages[-1], fused], stages=stages)
        raise ValueError(f"task {task!r}: one of {', '.join(TASKS)}")

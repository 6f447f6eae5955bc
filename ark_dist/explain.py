"""`python launch.py explain --model DIR --image FILE --target dataset:class [--method gradcam] [--out X.png]`
(or `--all [--top 4]`): where a released model looks for a class, as a heatmap over the image.

The heatmap is pytorch-grad-cam's (the `grad-cam` package) on the backbone's last stage: timm's
Swin keeps its tokens as (B, H, W, C), which the reshape transform turns into the (B, C, H, W) maps
the library expects. The image shown is the model's own input (the evaluation's centre crop of the
loader's canvas), so the heat sits on the pixels the model saw.
"""

from __future__ import annotations

import argparse
import io
import sys

import numpy as np
import torch
from torch import nn

METHODS = ("gradcam", "gradcam++")


class _Head(nn.Module):
    """A released model as one head's logits of an input tensor: what the CAM library calls."""

    def __init__(self, model, dataset: str):
        super().__init__()
        self.model, self.dataset = model, dataset

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.heads[self.dataset](self.model.projector(self.model.backbone(x)))


def _tokens_to_maps(tensor: torch.Tensor) -> torch.Tensor:
    """timm Swin's (B, H, W, C) stage output -> (B, C, H, W)."""
    return tensor.permute(0, 3, 1, 2) if tensor.ndim == 4 else tensor


def target_layer(model) -> nn.Module:
    """The backbone's last stage (Swin), or its last block for other timm models."""
    backbone = model.backbone
    if hasattr(backbone, "layers"):
        return backbone.layers[-1]
    if hasattr(backbone, "blocks"):
        return backbone.blocks[-1]
    if hasattr(backbone, "stages"):
        return backbone.stages[-1]
    raise ValueError(f"{type(backbone).__name__}: no last stage to explain (expected .layers, .blocks or .stages)")


def heatmap(model, image, *, dataset: str, label: str, method: str = "gradcam") -> tuple[np.ndarray, np.ndarray, float]:
    """(the model's input as grey in [0, 1] (S, S), the class's heat in [0, 1] (S, S), its probability)."""
    from pytorch_grad_cam import GradCAM, GradCAMPlusPlus
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    if dataset not in model.labels:
        raise ValueError(f"--target {dataset}:{label}: no head {dataset!r} (heads: {', '.join(model.labels)})")
    if label not in model.labels[dataset]:
        raise ValueError(f"--target {dataset}:{label}: no class {label!r} in {dataset} "
                         f"({', '.join(model.labels[dataset])})")
    if method not in METHODS:
        raise ValueError(f"--method {method!r}: one of {', '.join(METHODS)}")
    x = model.preprocess([image])
    index = model.labels[dataset].index(label)
    cam_class = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus}[method]
    with cam_class(model=_Head(model, dataset).eval(), target_layers=[target_layer(model)],
                   reshape_transform=_tokens_to_maps) as cam:
        heat = cam(input_tensor=x, targets=[ClassifierOutputTarget(index)])[0]
    probability = model.scores(x)[dataset][0, index]  # the same input: no second decode
    from ark_dist.data.views import IMAGENET_MEAN, IMAGENET_STD

    grey = (x[0, 0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]).clamp(0, 1).numpy()
    return grey, heat.astype(np.float32), float(probability)


def overlay(grey: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """(S, S, 3) uint8: the heat (jet) over the grey image, as the library draws it."""
    from pytorch_grad_cam.utils.image import show_cam_on_image

    return show_cam_on_image(np.repeat(grey[..., None], 3, axis=2).astype(np.float32), heat, use_rgb=True)


def grid(panels: list[tuple[str, np.ndarray]], *, columns: int | None = None) -> bytes:
    """PNG of titled overlays, `columns` to a row (default: all in one row)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    columns = columns or len(panels)
    rows = -(-len(panels) // columns)
    figure = Figure(figsize=(3 * columns, 3.3 * rows), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for ax in axes:
        ax.set_axis_off()
    for ax, (title, picture) in zip(axes, panels):
        ax.imshow(picture)
        ax.set_title(title, fontsize="small")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def main(argv: list[str]) -> int:
    from PIL import Image

    import ark_dist
    from ark_dist.fs import write_atomic
    from ark_dist.predict import InputError

    p = argparse.ArgumentParser(prog="launch.py explain", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="a release folder (launch.py release) or hf-hub:org/name")
    p.add_argument("--image", required=True, help="a PNG, JPEG, DICOM or MetaImage file")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--target", help="dataset:class, e.g. chestxray14:Nodule")
    which.add_argument("--all", action="store_true", help="a grid of the most probable classes of every head")
    p.add_argument("--top", type=int, default=4, help="classes in the --all grid (default 4)")
    p.add_argument("--method", choices=METHODS, default="gradcam")
    p.add_argument("--out", help="the PNG to write (default: <image>.<target>.cam.png beside the image)")
    args = p.parse_args(argv)
    try:
        model = ark_dist.load(args.model)
        if args.all:
            scored = [(d, c, v) for d, probs in model.predict([args.image])[0].items() for c, v in probs.items()]
            targets = [(d, c) for d, c, _ in sorted(scored, key=lambda t: -t[2])[:args.top]]
        else:
            dataset, _, label = args.target.partition(":")
            targets = [(dataset, label)]
        panels = []
        for dataset, label in targets:
            grey, heat, probability = heatmap(model, args.image, dataset=dataset, label=label, method=args.method)
            panels.append((f"{dataset}: {label} {probability:.3f}", overlay(grey, heat)))
    except (ValueError, InputError) as exc:
        print(f"error: {' '.join(str(exc).splitlines())}", file=sys.stderr)
        return 2
    name = "all" if args.all else args.target.replace(":", "-").replace(" ", "_").replace("/", "_")
    out = args.out or f"{args.image}.{name}.cam.png"
    if len(panels) == 1:
        buffer = io.BytesIO()
        Image.fromarray(panels[0][1]).save(buffer, format="PNG")
        data = buffer.getvalue()
    else:
        data = grid(panels)
    write_atomic(out, data)
    for title, _ in panels:
        print(title)
    print(f"wrote {out}")
    return 0

"""A released model (`launch.py release`) as a Python object, and `launch.py predict`.

    import ark_dist
    model = ark_dist.load("out/demo/release")          # a release folder, or "hf-hub:org/name"
    model.predict(["cxr.png"])   # -> [{dataset: {class: probability}}] per image
    model.embed(["cxr.png"])     # -> (N, num_features) pooled backbone features

    python launch.py predict --model out/demo/release FILE... [--json] [--top 3]

The preprocessing travels with the model (config.json): an image file (8- or 16-bit PNG, JPEG,
DICOM windowed as `shards` windows it, MetaImage) or an array becomes 8-bit grayscale, then the
evaluation path of training exactly: the square canvas (`load_size`, bilinear; JPEGs decoded at
reduced scale as the loader does), the centre crop `crop_pct` resampled to the input size, the
grey repeated over 3 channels and ImageNet-normalised. A multi-class head (RSNA) gives a softmax,
the others a sigmoid per class.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

MIN_SIDE = 16  # smaller originals hold no image worth scoring


class InputError(ValueError):
    """An input the model cannot score: one line naming the file."""


class ReleasedModel(nn.Module):
    """The backbone (timm, from the folder alone), the projector and the per-dataset heads."""

    def __init__(self, backbone: nn.Module, *, projector: nn.Module, heads: nn.ModuleDict, config: dict):
        super().__init__()
        self.backbone, self.projector, self.heads = backbone, projector, heads
        ark = config["ark_dist"]
        self.labels: dict[str, list[str]] = ark["labels"]
        self.tasks: dict[str, str] = ark["tasks"]
        self.image_size = int(config["pretrained_cfg"]["input_size"][-1])
        self.crop = float(config["pretrained_cfg"]["crop_pct"])
        self.load_size = int(ark.get("load_size", round(self.image_size / self.crop)))
        self.notes: list[str] = []  # what preprocessing changed about the last inputs (colour converted)
        self.sizes: list[tuple[int, int]] = []  # the last inputs' own (w, h)
        self.dense = None  # a Foundation X release's box and mask heads (predict_dense.build)
        dense = ark.get("dense") or {}
        self.boxes: dict[str, list[str]] = dense.get("boxes", {})
        self.masks: dict[str, list[str]] = dense.get("masks", {})

    # -- preprocessing -------------------------------------------------------------------------
    def canvas(self, image) -> np.ndarray:
        """One input (a file path, image bytes with a name, a PIL image or a 2-D array) as the
        (L, L) uint8 canvas the loader would make of it."""
        from PIL import Image

        from ark_dist.data.stages import decode_image

        if isinstance(image, (str, Path)):
            path = Path(image)
            try:
                data = path.read_bytes()
            except OSError as exc:
                raise InputError(f"{path}: cannot read it ({exc.strerror or exc})") from None
            return self._canvas_from_bytes(data, name=str(path))
        if isinstance(image, np.ndarray):
            if image.ndim == 3 and image.shape[-1] in (3, 4):
                self.notes.append(f"array of shape {image.shape}: colour converted to grayscale")
                image = Image.fromarray(image.astype(np.uint8)).convert("L")
            elif image.ndim != 2:
                raise InputError(f"array of shape {image.shape}: expected a grayscale (H, W) image")
            else:
                image = Image.fromarray(_to_uint8(image))
        if isinstance(image, Image.Image):
            self._check_size(image.size, name="image")
            if image.mode != "L":
                self.notes.append(f"image: {image.mode} converted to grayscale")
                image = image.convert("L")
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            return self._kept(decode_image(buffer.getvalue(), self.load_size))
        raise InputError(f"{type(image).__name__}: expected a file path, a PIL image or a 2-D array")

    def _canvas_from_bytes(self, data: bytes, *, name: str) -> np.ndarray:
        from PIL import Image, UnidentifiedImageError

        from ark_dist.data.stages import decode_image
        from shards.images import DICOM_SUFFIXES, METAIMAGE_SUFFIXES, ImageError, decode_original

        raster = not (name.lower().endswith(DICOM_SUFFIXES + METAIMAGE_SUFFIXES) or data[128:132] == b"DICM")
        try:
            if raster:
                with Image.open(io.BytesIO(data)) as probe:
                    mode, size = probe.mode, probe.size
                self._check_size(size, name=name)
                if mode in ("L", "P", "1") or mode in ("RGB", "RGBA", "LA", "CMYK", "YCbCr"):
                    if mode not in ("L", "P", "1", "LA"):
                        self.notes.append(f"{name}: {mode} colour image converted to grayscale")
                    return self._kept(decode_image(data, self.load_size))  # the loader's own decode, JPEG draft included
            image = decode_original(data, name=name)  # 16-bit PNG, DICOM, MetaImage: windowed to 8 bits
        except (UnidentifiedImageError, OSError, SyntaxError) as exc:
            raise InputError(f"{name}: not a readable image ({type(exc).__name__}: {exc})") from None
        except ImageError as exc:
            raise InputError(f"{name}: {exc}") from None
        self._check_size(image.size, name=name)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return self._kept(decode_image(buffer.getvalue(), self.load_size))

    def _kept(self, decoded: tuple[np.ndarray, tuple[int, int]]) -> np.ndarray:
        """The canvas; its image's own (w, h) kept in `sizes`, for boxes and masks in its pixels."""
        self.sizes.append(decoded[1])
        return decoded[0]

    @staticmethod
    def _check_size(size: tuple[int, int], *, name: str) -> None:
        if min(size) < MIN_SIDE:
            raise InputError(f"{name}: {size[0]}x{size[1]} pixels is too small to score (at least {MIN_SIDE} a side)")

    def preprocess(self, images) -> torch.Tensor:
        """(N, 3, S, S) float32 network inputs, as the evaluation renders them."""
        from ark_dist.data.config import ViewConfig
        from ark_dist.data.views import render_eval

        self.notes, self.sizes = [], []
        canvases = torch.from_numpy(np.stack([self.canvas(image) for image in images]))[:, None]  # (N, 1, L, L)
        views = ViewConfig(image_size=self.image_size, load_size=self.load_size, eval_crop=self.crop)
        return render_eval(canvases, views)[:, 0]

    # -- outputs -------------------------------------------------------------------------------
    @torch.no_grad()
    def embed(self, images) -> torch.Tensor:
        """(N, num_features) pooled backbone features."""
        return self.backbone(self.preprocess(images).to(_device(self)))

    @torch.no_grad()
    def scores(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """{dataset: (N, classes)} of preprocessed inputs: softmax for a multi-class head, sigmoid for the others."""
        projected = self.projector(self.backbone(x.to(_device(self))))
        out = {}
        for name in self.labels:
            logits = self.heads[name](projected).float()
            out[name] = torch.softmax(logits, dim=-1) if self.tasks.get(name) == "multiclass" else torch.sigmoid(logits)
        return out

    def probabilities(self, images) -> dict[str, torch.Tensor]:
        """`scores` of image inputs."""
        return self.scores(self.preprocess(images))

    def predict(self, images) -> list[dict[str, dict[str, float]]]:
        """Per image: {dataset: {class: probability}}."""
        probs = self.probabilities(images)
        return [{name: dict(zip(self.labels[name], probs[name][i].tolist())) for name in self.labels}
                for i in range(len(images))]


    @torch.no_grad()
    def detect(self, images) -> list[dict[str, list[dict]]]:
        """Per image: {dataset: [{"label", "score", "box": [x0, y0, x1, y1] in the image's pixels}]}
        from every box head, best first (after each head's NMS and score threshold)."""
        from ark_dist.predict_dense import to_original

        x = self.preprocess(images).to(_device(self))
        if len(x) == 1:  # FCOS's GroupNorm needs two values a group on its 1x1 level (a narrow head): score a pair
            x = x.repeat(2, 1, 1, 1)
        out = [{} for _ in images]
        if not self.boxes:  # an Ark release, or Foundation X's without box heads
            return out
        raw = self.dense.every_head(x, task="loc")  # one backbone pass for every box head
        for name, classes in self.boxes.items():
            found = self.dense.loc_heads[name].detect(raw[name])[:len(out)]
            for i, (d, size) in enumerate(zip(found, self.sizes)):
                boxes = to_original(d["boxes"].float().cpu(), size=size, image_size=self.image_size, crop=self.crop)
                out[i][name] = [{"label": classes[int(k)], "score": float(s), "box": [round(v, 1) for v in b.tolist()]}
                                for b, s, k in zip(boxes, d["scores"], d["labels"])]
        return out

    @torch.no_grad()
    def segment(self, images) -> list[dict[str, dict[str, np.ndarray]]]:
        """Per image: {dataset: {class: (h, w) float32 probability over the image's pixels}} from
        every mask head (0 outside the centre crop the model sees)."""
        from ark_dist.predict_dense import mask_to_original

        x = self.preprocess(images).to(_device(self))
        out = [{} for _ in images]
        if not self.masks:
            return out
        logits = self.dense.every_head(x, task="seg")  # one backbone pass for every mask head
        for name, classes in self.masks.items():
            probs = torch.sigmoid(logits[name].float()).cpu()  # (N, C, S, S)
            for i, size in enumerate(self.sizes):
                out[i][name] = {c: mask_to_original(probs[i, k], size=size, crop=self.crop) for k, c in enumerate(classes)}
        return out


def _device(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


def _to_uint8(pixels: np.ndarray) -> np.ndarray:
    from shards.images import _to_uint8 as window

    return pixels if pixels.dtype == np.uint8 else window(pixels)


def load(source: str, *, device: str = "cpu") -> ReleasedModel:
    """A release folder (`launch.py release`) or a Hub id (`hf-hub:org/name`) as a `ReleasedModel`."""
    import timm
    from safetensors.torch import load_file

    hub = source.startswith("hf-hub:")
    if hub:
        from huggingface_hub import hf_hub_download

        config_path = hf_hub_download(source.removeprefix("hf-hub:"), "config.json")
        heads_path = hf_hub_download(source.removeprefix("hf-hub:"), "ark_heads.safetensors")
        name = source
    else:
        folder = Path(source)
        config_path, heads_path = folder / "config.json", folder / "ark_heads.safetensors"
        if not config_path.is_file() or not heads_path.is_file():
            raise ValueError(f"{source}: not a release folder (config.json and ark_heads.safetensors are written "
                             f"by `launch.py release`)")
        name = f"local-dir:{folder.resolve()}"
    config = json.loads(Path(config_path).read_text())
    if "ark_dist" not in config:
        raise ValueError(f"{source}: config.json has no ark_dist section (not an ark-dist release)")
    backbone = timm.create_model(name, pretrained=True)
    tensors = load_file(str(heads_path))
    projector = _projector(tensors, kind=config["ark_dist"]["projector"])
    heads = nn.ModuleDict()
    for dataset, classes in config["ark_dist"]["labels"].items():
        weight, bias = tensors[f"omni_heads.{dataset}.weight"], tensors[f"omni_heads.{dataset}.bias"]
        if weight.shape[0] != len(classes):
            raise ValueError(f"{source}: head {dataset} has {weight.shape[0]} outputs for {len(classes)} classes")
        head = nn.Linear(weight.shape[1], weight.shape[0])
        head.load_state_dict({"weight": weight, "bias": bias})
        heads[dataset] = head
    model = ReleasedModel(backbone, projector=projector, heads=heads, config=config)
    from ark_dist.predict_dense import build

    model.dense = build(config, backbone=backbone, tensors=tensors)  # None without box or mask heads
    return model.to(device).eval()


def _projector(tensors: dict, *, kind: str) -> nn.Module:
    if kind == "none":
        return nn.Identity()
    if kind == "linear":
        layer = nn.Linear(tensors["projector.weight"].shape[1], tensors["projector.weight"].shape[0])
        layer.load_state_dict({"weight": tensors["projector.weight"], "bias": tensors["projector.bias"]})
        return layer
    first, second = tensors["projector.0.weight"], tensors["projector.2.weight"]
    mlp = nn.Sequential(nn.Linear(first.shape[1], first.shape[0]), nn.ReLU(inplace=True),
                        nn.Linear(second.shape[1], second.shape[0]))
    mlp.load_state_dict({k.removeprefix("projector."): v for k, v in tensors.items() if k.startswith("projector.")})
    return mlp


def write_masks(folder: str, files: list[str], masks: list[dict]) -> None:
    """`<folder>/<file stem>.<dataset>.<class>.png`: 255 where the probability exceeds 0.5."""
    from PIL import Image

    from ark_dist.fs import write_atomic

    Path(folder).mkdir(parents=True, exist_ok=True)
    for file, per_dataset in zip(files, masks):
        for dataset, per_class in per_dataset.items():
            for name, probability in per_class.items():
                buffer = io.BytesIO()
                Image.fromarray(((probability > 0.5) * 255).astype(np.uint8)).save(buffer, format="PNG")
                safe = name.replace("/", "_").replace(" ", "_")
                write_atomic(str(Path(folder) / f"{Path(file).stem}.{dataset}.{safe}.png"), buffer.getvalue())


def table(files: list[str], predictions: list[dict], *, top: int) -> str:
    """A markdown table: per file and dataset, the `top` most probable classes."""
    lines = ["| file | dataset | top classes (probability) |", "|---|---|---|"]
    for file, prediction in zip(files, predictions):
        for dataset, found in prediction.get("boxes", {}).items():
            best = sorted(found, key=lambda d: -d["score"])[:top]
            lines.append(f"| {file} | {dataset} boxes | " + ", ".join(
                f"{d['label']} {d['score']:.3f} [{', '.join(f'{v:g}' for v in d['box'])}]" for d in best) + " |")
        for dataset, probs in prediction.items():
            if dataset == "boxes":
                continue
            best = sorted(probs.items(), key=lambda kv: -kv[1])[:top]
            lines.append(f"| {file} | {dataset} | " + ", ".join(f"{c} {p:.3f}" for c, p in best) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="launch.py predict", description="A released model's probabilities for image files")
    p.add_argument("--model", required=True, help="a release folder (launch.py release) or hf-hub:org/name")
    p.add_argument("files", nargs="+", help="PNG (8/16-bit), JPEG, DICOM or MetaImage files")
    p.add_argument("--json", action="store_true", help="every class of every head, as JSON")
    p.add_argument("--top", type=int, default=3, help="classes per head in the table (default 3)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--boxes", action="store_true", help="also the box heads' detections (a Foundation X release)")
    p.add_argument("--masks", metavar="DIR", help="also write each mask head's masks (probability > 0.5) as PNGs here")
    args = p.parse_args(argv)
    try:
        model = load(args.model)
        stems = [Path(f).stem for f in args.files]
        if args.masks and len(set(stems)) < len(stems):
            twice = sorted({s for s in stems if stems.count(s) > 1})
            raise ValueError(f"--masks: inputs share the name {', '.join(twice)}, so their masks would overwrite "
                             "each other; rename one")
        if (args.boxes and not model.boxes) or (args.masks and not model.masks):
            raise ValueError(f"{args.model}: this release has no {'box' if args.boxes and not model.boxes else 'mask'} "
                             "heads (a Foundation X release has them)")
        predictions, notes = [], []
        for start in range(0, len(args.files), args.batch_size):
            chunk = args.files[start:start + args.batch_size]
            predictions += model.predict(chunk)
            if args.boxes:
                for prediction, found in zip(predictions[start:], model.detect(chunk)):
                    prediction["boxes"] = found
            if args.masks:  # one at a time: a (h, w) float map per class of a full-size image is large
                for file in chunk:
                    write_masks(args.masks, [file], model.segment([file]))
            notes += model.notes
    except (ValueError, InputError) as exc:
        print(f"error: {' '.join(str(exc).splitlines())}", file=sys.stderr)
        return 2
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    if args.json:
        print(json.dumps(dict(zip(args.files, predictions)), indent=1))
    else:
        print(table(args.files, predictions, top=args.top), end="")
    return 0

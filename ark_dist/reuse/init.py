"""Where a reuse command takes its weights from (`init`), and every key the load could not place.

- a run folder or a checkpoint folder of ark-dist: its teacher (`export.load_checkpoint`);
- an ark-dist export (`.safetensors` with ark-dist's metadata): the model it describes, strict;
- any other tensor file (a published Ark `.pth.tar` with `omni_heads.<i>`, the official Swin
  release, a timm file): the model of the given config, through `weights.load_pretrained`, which
  logs the tensors it drops and the backbone tensors the file lacks;
- `random`: the given model, initialised as training initialises it.

Label spaces: an ark-dist checkpoint or export carries its own; for any other file they are the
caller's (`heads`, e.g. from the store's manifest), since a `.pth.tar` has no place for them.
"""

from __future__ import annotations

import json

import torch

from ark_dist.fs import filesystem
from ark_dist.model import ArkModel
from ark_dist.model.config import ModelConfig

RANDOM = "random"
# The classes of an Ark release's numbered heads (`omni_heads.0..5`, Ark's dataset order) as ark-dist's
# sources name them, in the heads' output order. Checked for RSNA against the label files Ark and
# BenchmarkTransformers train from (dataset/RSNAPneumonia_train.txt): index 0 holds 33 % of the
# images, 1 44 %, 2 22 %, the shares of Normal, No Lung Opacity / Not Normal and Lung Opacity
# (BenchmarkTransformers' printed name list puts the first two the other way round).
ARK_RELEASE_LABELS = {
    "mimic_cxr": ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum", "Fracture",
                  "Lung Lesion", "Lung Opacity", "No Finding", "Pleural Effusion", "Pleural Other", "Pneumonia",
                  "Pneumothorax", "Support Devices"],
    "chexpert": ["No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
                 "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
                 "Fracture", "Support Devices"],
    "chestxray14": ["Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
                    "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia"],
    "rsna_pneumonia": ["Normal", "No Lung Opacity / Not Normal", "Lung Opacity"],
    "vindr_cxr": ["Pleural effusion", "Lung tumor", "Pneumonia", "Tuberculosis", "Other diseases", "No finding"],
    "shenzhen": ["Tuberculosis"],
}


def _export_metadata(url: str) -> dict | None:
    """The metadata of an ark-dist export, or None for any other safetensors file. Only the header
    is read: 8 bytes of its length, then its JSON, whose `__metadata__` is the metadata."""
    fs, path = filesystem(url)
    try:
        with fs.open(path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(size))
    except FileNotFoundError:
        raise ValueError(f"init={url!r}: no such file") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"init={url!r}: not a safetensors file ({exc})") from None
    meta = header.get("__metadata__") or {}
    return meta if meta.get("format") == "ark-dist-export" else None


def _from_export(url: str, meta: dict, *, log) -> tuple[ArkModel, dict[str, list[str]]]:
    from safetensors.torch import load

    labels = json.loads(meta["labels"])
    config = ModelConfig(backbone=meta["backbone"], backbone_kwargs=json.loads(meta["backbone_kwargs"]),
                         projector=meta["projector"], projector_dim=int(meta["projector_dim"]))
    with torch.random.fork_rng(devices=[]):
        model = ArkModel(config, heads={name: len(names) for name, names in labels.items()})
    fs, path = filesystem(url)
    raw = load(fs.cat_file(path))
    if meta.get("layout") == "legacy":  # timm 0.5.4's keys and numbered heads: back through timm's converter
        from ark_dist.model.legacy import current_tensors

        raw = current_tensors(raw, backbone=model.backbone, datasets=list(labels))
    tensors = {(k if k.startswith(("projector.", "omni_heads.")) else f"backbone.{k}"): v for k, v in raw.items()}
    result = model.load_state_dict(tensors, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(f"{url}: does not match the model its metadata describes: missing "
                         f"{result.missing_keys[:3]}, unexpected {result.unexpected_keys[:3]}")
    log(f"loaded {url}: ark-dist export of {config.backbone}, {len(tensors)} tensors, heads {list(labels)}")
    return model, labels


def labels_of(init: str) -> dict[str, list[str]] | None:
    """The heads' label spaces an ark-dist export or checkpoint carries, read without loading
    weights (for a driver to check its inputs before workers start); None for other files."""
    from ark_dist.export import ExportError, _read_state, resolve_checkpoint
    from ark_dist.train.worker import STATE

    if init.endswith(".safetensors"):
        meta = _export_metadata(init)
        return json.loads(meta["labels"]) if meta else None
    if init == RANDOM or init.endswith((".pth", ".pth.tar", ".pt", ".bin")):
        return None
    try:
        checkpoint = resolve_checkpoint(init)
        fs, path = filesystem(checkpoint)
        return _read_state(fs, f"{path}/{STATE}", f"{checkpoint}/{STATE}")["labels"]
    except ExportError as exc:
        raise ValueError(f"init={init!r}: {exc}") from None


def release_heads(init: str) -> dict[str, list[str]] | None:
    """{dataset: class names} of the numbered heads (`omni_heads.<i>`) of a published Ark file whose
    output sizes agree with `ARK_RELEASE_LABELS`, in Ark's order; None when it has none."""
    import re

    from ark_dist.model.weights import ARK_HEADS, read_state_dict

    state = read_state_dict(init)
    heads = {}
    for key, tensor in state.items():
        numbered = re.fullmatch(r"omni_heads\.(\d+)\.weight", key)
        if numbered and int(numbered[1]) < len(ARK_HEADS):
            name = ARK_HEADS[int(numbered[1])]
            if tensor.shape[0] == len(ARK_RELEASE_LABELS[name]):
                heads[name] = ARK_RELEASE_LABELS[name]
    return {name: heads[name] for name in ARK_HEADS if name in heads} or None


def describe(init: str, *, recipe: str) -> tuple[dict[str, list[str]], dict | None]:
    """(the heads' class names, the model config as a dict or None) for a reuse pass: an ark-dist
    checkpoint or export names both itself (None); a published Ark file takes its heads from
    `release_heads` and its model from the `model` section of `recipe` (the one it was trained with)."""
    from ark_dist.config import load, to_dict

    labels = labels_of(init)
    if labels is not None:
        return labels, None
    if init == RANDOM:
        raise ValueError("init=random has no pretrained heads to score with")
    heads = release_heads(init)
    if heads is None:
        raise ValueError(f"{init}: neither an ark-dist checkpoint or export nor an Ark release with numbered heads "
                         f"(omni_heads.<i>); its classes are unknown")
    return heads, to_dict(load(recipe).model)


def load_model(init: str, *, model: ModelConfig | None = None, heads: dict[str, list[str]] | None = None,
               log=print) -> tuple[ArkModel, dict[str, list[str]]]:
    """(model in eval mode, {dataset: class names} of its heads) from `init` (see the module)."""
    from ark_dist.export import ExportError, load_checkpoint, resolve_checkpoint
    from ark_dist.model import load_pretrained

    if init.endswith(".safetensors"):
        meta = _export_metadata(init)
        if meta is not None:
            loaded, labels = _from_export(init, meta, log=log)
            return loaded.eval(), labels
    elif init != RANDOM and not init.endswith((".pth", ".pth.tar", ".pt", ".bin")):
        try:
            loaded, state = load_checkpoint(resolve_checkpoint(init))
        except ExportError as exc:
            raise ValueError(f"init={init!r}: {exc}") from None
        log(f"loaded {init}: the teacher of ark-dist checkpoint {state['cursor']}, heads {list(state['labels'])}")
        return loaded, state["labels"]
    if model is None or heads is None:
        raise ValueError(f"init={init!r}: a file without ark-dist's metadata needs the model config and the heads' "
                         f"label spaces (a recipe's `model` section and a store)")
    built = ArkModel(model, heads={name: len(names) for name, names in heads.items()})
    if init == RANDOM:
        log(f"init=random: {model.backbone} with heads {list(heads)}, nothing loaded")
    else:
        load_pretrained(built, init, log=log)
    return built.eval(), dict(heads)

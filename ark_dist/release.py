"""`python launch.py release --checkpoint RUN_OR_CHECKPOINT --out DIR [--student]`: a model folder in
the Hugging Face convention that timm loads with no code of ours.

    DIR/model.safetensors      the backbone under timm's keys, no classifier
    DIR/config.json            timm's: architecture, num_classes 0, num_features, model_args and
                               pretrained_cfg (input size, mean, std, interpolation, crop_pct as the
                               recipe evaluates); under "ark_dist" every head's classes and task
    DIR/ark_heads.safetensors  the projector and the per-dataset heads, label names in its metadata
    DIR/<name>.pth.tar         the flat Ark-compatible file `export` writes
    DIR/README.md              a model card: data, recipe, the run's evaluation table, use, limits

    timm.create_model("local-dir:DIR", pretrained=True)   # or "hf-hub:org/name" once uploaded

Local folders appear whole: the files are written into a temporary folder beside DIR, which then
takes DIR's place. An s3:// DIR gets each file as one whole object.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import shutil
import sys
import uuid
from pathlib import Path

import torch

from ark_dist.export import ExportError, exported_tensors, load_checkpoint, metadata, resolve_checkpoint
from ark_dist.fs import filesystem, is_local, join

WEIGHTS, CONFIG, HEADS, CARD = "model.safetensors", "config.json", "ark_heads.safetensors", "README.md"
HEAD_PREFIXES = ("projector.", "omni_heads.", "loc_neck.", "loc_heads.", "seg_decoder.", "seg_heads.")
DATASET_NAMES = {"mimic_cxr": "MIMIC-CXR", "chexpert": "CheXpert", "chestxray14": "ChestX-ray14",
                 "rsna_pneumonia": "RSNA Pneumonia", "vindr_cxr": "VinDr-CXR", "shenzhen": "Shenzhen"}


def timm_config(model, cfg, labels: dict[str, list[str]], tasks: dict[str, str], *, state: dict | None = None) -> dict:
    """config.json: what timm's `local-dir:`/`hf-hub:` loader needs to build the backbone, and the
    heads ark-dist adds (timm ignores the `ark_dist` key); a Foundation X checkpoint's `state` adds
    its box and mask heads (`ark_dist.dense`)."""
    from dataclasses import asdict

    from ark_dist.data.views import IMAGENET_MEAN, IMAGENET_STD

    size = cfg.data.views.image_size
    return {
        "architecture": cfg.model.backbone,
        "num_classes": 0,
        "num_features": int(model.backbone.num_features),
        "global_pool": "avg",
        "model_args": dict(cfg.model.backbone_kwargs),
        "pretrained_cfg": {"input_size": [3, size, size], "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
                           "interpolation": "bilinear", "crop_pct": cfg.data.views.eval_crop, "crop_mode": "center",
                           "num_classes": 0, "first_conv": "patch_embed.proj", "classifier": None},
        "ark_dist": {"format_version": 1, "labels": labels, "tasks": tasks, "projector": cfg.model.projector,
                     "load_size": cfg.data.views.load_size,  # the loader's square canvas the centre crop comes from
                     "projector_dim": cfg.model.projector_dim, "grayscale": "repeated over 3 channels",
                     "metric_labels": {k: v for k, v in cfg.data.metric_labels.items() if k in labels},
                     **({"dense": {"boxes": state.get("boxes", {}), "masks": state.get("masks", {}),
                                   "config": asdict(cfg.model.dense)}}
                        if state and (state.get("boxes") or state.get("masks")) else {})},
    }


def _fmt(value) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def evaluation_table(history: list[dict], datasets: list[str]) -> tuple[dict | None, str]:
    """(the last evaluation row, its markdown table: per dataset the headline AUC of student and
    teacher on val and test, CheXpert over its 5 competition classes as Ark reports it)."""
    row = next((r for r in reversed(history) if any(k.startswith("auc/") for k in r)), None)
    if row is None:
        return None, "This run has no evaluation yet.\n"
    lines = ["| dataset | teacher val | teacher test | student val | student test |", "|---|---:|---:|---:|---:|"]
    for name in [*datasets, "mean"]:
        cells = [_fmt(row.get(f"auc/{split}/{name}/{model}")) for model in ("teacher", "student")
                 for split in ("val", "test")]
        lines.append(f"| {DATASET_NAMES.get(name, name)} | " + " | ".join(cells) + " |")
    return row, "\n".join(lines) + "\n"


DENSE_METRICS = {"boxes": ("map50", "map"), "masks": ("dice", "dice_global")}


def dense_table(history: list[dict], state: dict) -> str:
    """Foundation X's box and mask heads at the last evaluation of each metric (a dense head is
    evaluated in its own pass, not with the others): per head and metric, teacher and student on
    val and test; empty for a run without such heads."""
    lines = []
    for kind, metrics in DENSE_METRICS.items():
        for name in state.get(kind, {}):
            for metric in metrics:
                row = next((r for r in reversed(history) if any(k.startswith(f"{metric}/") and f"/{name}/" in k
                                                                 for k in r)), {})
                cells = [_fmt(row.get(f"{metric}/{split}/{name}/{model}")) for model in ("teacher", "student")
                         for split in ("val", "test")]
                lines.append(f"| {DATASET_NAMES.get(name, name)} | {metric} | " + " | ".join(cells) + " |")
    if not lines:
        return ""
    return "\n".join(["| dataset | metric | teacher val | teacher test | student val | student test |",
                      "|---|---|---:|---:|---:|---:|", *lines]) + "\n"


def subgroup_table(row: dict) -> str:
    """The last evaluation's teacher test AUC per subgroup, where the run logged them."""
    lines = []
    for key, value in row.items():
        parts = key.split("/")
        if key.startswith("auc_group/test/") and len(parts) == 5 and parts[3] == "teacher":
            lines.append(f"| {DATASET_NAMES.get(parts[2], parts[2])} | {parts[4].replace('=', ' | ')} | {_fmt(value)} |")
    if not lines:
        return ""
    return "\n".join(["| dataset | attribute | group | teacher test AUC |", "|---|---|---|---:|", *lines]) + "\n"


def model_card(*, cfg, state: dict, history: list[dict], manifest: dict | None, repo: str, which: str) -> str:
    """README.md in the Hub's model-card convention: YAML front matter, then the data, the recipe,
    the run's own evaluation numbers, how to load it, and what it is not for."""
    import yaml

    labels, datasets = state["labels"], list(state["labels"])
    front = {"license": "other", "library_name": "timm",
             "tags": ["image-feature-extraction", "timm", "chest-x-ray", "medical-imaging", "ark", "ark-dist"],
             "datasets": datasets, "metrics": ["roc_auc", *(["mean_average_precision"] if state.get("boxes") else []),
                                               *(["dice"] if state.get("masks") else [])],
             "pipeline_tag": "image-feature-extraction"}
    row, table = evaluation_table(history, datasets)
    out = ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "",
           f"# {repo}", "",
           f"The {which} of an Ark run trained by ark-dist: a `{cfg.model.backbone}` backbone "
           f"({cfg.data.views.image_size} px input) shared by one head per dataset, learned one dataset at a time "
           f"with an EMA teacher (Ark, MICCAI 2023; Ark+, Nature 2025). The backbone loads in timm alone; "
           f"`ark_heads.safetensors` holds the projector and the per-dataset heads.", "",
           "## How to load it", "", "```python", "import timm",
           f'model = timm.create_model("local-dir:{repo}", pretrained=True)  # or "hf-hub:<org>/<name>" once uploaded',
           "features = model(images)  # (N, 3, H, W) normalised by config.json's mean/std -> (N, num_features)",
           "```", "", "Upload with `huggingface_hub.upload_folder(folder_path=..., repo_id=...)`.", "",
           "## Training data", "", "| dataset | classes | train | val | test | label policy |", "|---|---:|---:|---:|---:|---|"]
    for name in datasets:
        policy = cfg.data.policy(name)
        splits = (manifest or {}).get(name, {}).get("splits", {})
        counts = [str(splits[s]["num_samples"]) if s in splits else "?" for s in ("train", "val", "test")]
        out.append(f"| {DATASET_NAMES.get(name, name)} | {len(labels[name])} | " + " | ".join(counts)
                   + f" | uncertain {policy.uncertain}, blank {policy.blank}, readers {policy.readers} |")
    if manifest is None:
        out += ["", "(The store's manifest could not be read when this card was written: image counts unknown.)"]
    out += ["", "## Recipe", "",
            f"- {cfg.train.epochs} epochs of the `{cfg.method.schedule}` schedule, global batch {cfg.train.global_batch}, "
            f"{cfg.optim.name} lr {cfg.optim.lr:g} ({cfg.optim.warmup_epochs:g} warm-up epochs, then {cfg.optim.schedule})",
            f"- teacher: EMA with momentum from {cfg.method.momentum:g} ({cfg.method.ema} updates), consistency weight "
            f"up to {cfg.method.consistency:g}; teacher view `{cfg.data.views.teacher}`",
            f"- projector `{cfg.model.projector}` ({cfg.model.projector_dim}), precision {cfg.engine.precision}, "
            f"{cfg.engine.num_workers} data-parallel workers", f"- stopped at {json.dumps(state['cursor'])}", "",
            "## Evaluation", "",
            "ROC-AUC at the run's last evaluation, from its `metrics.jsonl` (CheXpert: the mean over its 5 "
            "competition classes, as Ark reports it; the others: over all their classes).", "", table.rstrip()]
    dense = dense_table(history, state)
    if dense:
        out += ["", "Box heads: COCO mAP at IoU 0.5 (`map50`) and over 0.50:0.95 (`map`); mask heads: the mean "
                "Dice over (image, class) pairs with the class labelled (`dice`) and over all pixels at once "
                "(`dice_global`), at each head's last evaluation.", "", dense.rstrip()]
    groups = subgroup_table(row) if row else ""
    if groups:
        out += ["", "By subgroup (the teacher's test AUC of each group's samples):", "", groups.rstrip()]
    out += ["", "## Heads", ""]
    out += [f"- {DATASET_NAMES.get(name, name)}: {', '.join(classes)}" for name, classes in labels.items()]
    out += ["", "## Intended use and limitations", "",
            "- For research on chest X-ray representation learning and transfer. It is not a medical device and "
            "has not been validated for clinical use: do not use it to diagnose or treat anyone.",
            "- The training datasets carry their own licences and data-use agreements (several forbid commercial "
            "use or redistribution, and MIMIC-CXR needs credentialed access); anyone using these weights must "
            "respect them.",
            "- Labels of these public sets are largely mined from reports and noisy; AUCs differ by subgroup "
            "(above) and by site. Check performance on your own population before drawing conclusions.", ""]
    return "\n".join(out)


def _history(fs, path: str) -> list[dict]:
    from ark_dist.train.worker import HISTORY

    try:
        text = fs.cat_file(f"{path}/{HISTORY}").decode()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _manifest(cfg) -> dict | None:
    from ark_dist.data import Store, read_manifest

    try:
        return read_manifest(Store(cfg.data.store))
    except Exception:  # noqa: BLE001 - the card says the counts are unknown; the weights are what matter
        return None


def build(checkpoint: str, *, student: bool = False, name: str = "model") -> dict[str, bytes]:
    """{file name: bytes} of the release of `checkpoint` (a checkpoint or run folder)."""
    from safetensors.torch import save

    from ark_dist.config import Config
    from ark_dist.configtree import from_dict

    source = resolve_checkpoint(checkpoint, student=student)
    model, state = load_checkpoint(source, student=student)
    cfg = from_dict(Config, state["config"])
    which = "student" if student else "teacher"
    tensors = exported_tensors(model)
    backbone = {k: v for k, v in tensors.items() if not k.startswith(HEAD_PREFIXES)}
    heads = {k: v for k, v in tensors.items() if k.startswith(HEAD_PREFIXES)}
    manifest = _manifest(cfg)
    tasks = {d: (manifest or {}).get(d, {}).get("task", "multiclass" if d == "rsna_pneumonia" else "multilabel")
             for d in state["labels"]}
    buffer = io.BytesIO()
    torch.save(tensors, buffer)
    fs, path = filesystem(source)
    return {
        WEIGHTS: save(backbone, metadata={"format": "pt"}),
        CONFIG: (json.dumps(timm_config(model, cfg, state["labels"], tasks, state=state), indent=2) + "\n").encode(),
        HEADS: save(heads, metadata=metadata(model, state, source=source, which=which)),
        f"{name}.pth.tar": buffer.getvalue(),
        CARD: model_card(cfg=cfg, state=state, history=_history(fs, path), manifest=manifest, repo=name,
                         which=which).encode(),
    }


def release(checkpoint: str, out: str, *, student: bool = False) -> list[str]:
    """Write the release folder `out` (local or s3://); returns the files' paths."""
    name = out.rstrip("/").rsplit("/", 1)[-1] or "model"
    if is_local(out):
        target = Path(out.removeprefix("file://"))
        if target.exists() and not target.is_dir():
            raise ExportError(f"--out {out} is a file, not a folder")
        if not target.parent.is_dir():
            raise ExportError(f"cannot write {out}: folder {target.parent} does not exist")
    files = build(checkpoint, student=student, name=name)
    if not is_local(out):
        for file, data in files.items():
            fs, path = filesystem(join(out, file))
            fs.pipe_file(path, data)
        return [join(out, file) for file in files]
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        for file, data in files.items():
            (tmp / file).write_bytes(data)
        if target.exists():
            old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(target, old)
            os.rename(tmp, target)
            shutil.rmtree(old)
        else:
            os.rename(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return [str(target / file) for file in files]


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="launch.py release", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="a run folder (its furthest checkpoint) or a checkpoint folder")
    p.add_argument("--out", required=True, help="the model folder to write (local or s3://)")
    p.add_argument("--student", action="store_true", help="release the student instead of the EMA teacher")
    args = p.parse_args(argv)
    try:
        written = release(args.checkpoint, args.out, student=args.student)
    except (ExportError, ValueError) as exc:
        print(f"error: {' '.join(str(exc).splitlines())}", file=sys.stderr)
        return 2
    print("\n".join(written))
    return 0


__all__ = ["build", "release", "main", "timm_config", "model_card"]

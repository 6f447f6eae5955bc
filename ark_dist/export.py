"""`python launch.py export --checkpoint PATH_OR_URL --out FILE [--student]` (DESIGN 2.5).

A training checkpoint becomes the weights that timm and the Ark releases load: the backbone under
timm's own keys (our backbone is a timm model, so only the `backbone.` prefix goes), the projector
and per-dataset heads under `projector.*` and `omni_heads.<dataset>.*`, in fp32, written twice with
the same tensors: `.safetensors` (with the label spaces and provenance in its metadata) and the
flat `{key: tensor}` `.pth.tar` that Ark ships.

Checkpoints are read through fsspec (local or s3://); only JSON and safetensors are parsed, so no
pickle from storage is ever loaded.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import posixpath
import sys
import uuid
from urllib.parse import urlsplit, urlunsplit

import torch

from ark_dist.fs import filesystem, is_local
from ark_dist.train.worker import STATE, STUDENT, TEACHER  # the files a checkpoint holds

CHECKPOINT_PREFIX = "checkpoint_"  # Ray Train's checkpoint folders in a run folder
FORMAT, FORMAT_VERSION = "ark-dist-export", "1"


class ExportError(ValueError):
    """A user-facing failure, one line naming the culprit."""


def _public(url: str) -> str:
    """`url` as it may be written into a file: absolute if local; no user:password, query or fragment."""
    if is_local(url):
        return os.path.abspath(os.path.expanduser(url.removeprefix("file://")))
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))


def _names(fs, path: str, url: str) -> dict[str, str]:
    """The entries of folder `path`: name -> "file" | "directory"."""
    try:
        if fs.isfile(path):  # `ls` of a file lists the file itself
            raise NotADirectoryError(path)
        entries = fs.ls(path, detail=True)
    except FileNotFoundError:
        raise ExportError(f"checkpoint not found: {url}") from None
    except NotADirectoryError:
        raise ExportError(f"{url} is a file: name a checkpoint folder or a run folder") from None
    except Exception as exc:  # noqa: BLE001 - fsspec backends raise many types for one outage
        raise ExportError(f"cannot list {url}: {type(exc).__name__}: {exc}") from exc
    return {posixpath.basename(e["name"].rstrip("/")): e["type"] for e in entries}


def _read(fs, path: str, url: str) -> bytes:
    try:
        return fs.cat_file(path)
    except Exception as exc:  # noqa: BLE001
        raise ExportError(f"cannot read {url}: {type(exc).__name__}: {exc}") from exc


def _read_state(fs, path: str, url: str) -> dict:
    try:
        state = json.loads(_read(fs, path, url))
    except json.JSONDecodeError as exc:
        raise ExportError(f"{url}: not valid JSON ({exc})") from None
    for key in ("cursor", "labels", "manifest_sha256", "config"):
        if key not in state:
            raise ExportError(f"{url} has no {key!r} (written by an older ark-dist?)")
    return state


def checkpoint_state(url: str) -> dict:
    """A checkpoint folder's state.json (cursor, labels, manifest sha256, resolved config)."""
    fs, path = filesystem(url)
    return _read_state(fs, posixpath.join(path, STATE), f"{url}/{STATE}")


def _cursor(state: dict, url: str) -> tuple[int, int, int]:
    try:
        return tuple(int(state["cursor"][k]) for k in ("epoch", "round", "step"))
    except (KeyError, TypeError, ValueError):
        raise ExportError(f"{url}: malformed cursor {state['cursor']!r}") from None


def latest_checkpoint(run_folder: str, *, student: bool = False) -> str:
    """The URL of the checkpoint in `run_folder` with the furthest cursor (epoch, round, step).

    Only complete checkpoints count: a `checkpoint_*` folder with its `state.json` and the weights
    to export. Ray copies a checkpoint's files in no set order, so one still being written may lack
    either; it is never taken. Equal cursors: the later folder name (Ray names them by time)."""
    url = run_folder.rstrip("/")
    fs, path = filesystem(url)
    weights = STUDENT if student else TEACHER
    candidates = sorted(n for n, kind in _names(fs, path, url).items()
                        if kind == "directory" and n.startswith(CHECKPOINT_PREFIX))
    best = None
    for name in candidates:
        files = _names(fs, posixpath.join(path, name), f"{url}/{name}")
        if STATE not in files or weights not in files:
            continue
        state_url = f"{url}/{name}/{STATE}"
        key = (_cursor(_read_state(fs, posixpath.join(path, name, STATE), state_url), state_url), name)
        best = max(best, key) if best else key
    if best is None:
        raise ExportError(f"{url}: no complete checkpoint (none of its {len(candidates)} {CHECKPOINT_PREFIX}* "
                          f"folders has both {STATE} and {weights})")
    return f"{url}/{best[1]}"


def resolve_checkpoint(url: str, *, student: bool = False) -> str:
    """`url` itself when it is a checkpoint folder; its furthest complete checkpoint when it is a
    run folder."""
    url = url.rstrip("/")
    fs, path = filesystem(url)
    names = _names(fs, path, url)
    if STATE in names:
        weights = STUDENT if student else TEACHER
        if weights not in names:
            raise ExportError(f"{url}: no {weights} (an incomplete checkpoint?)")
        return url
    if any(kind == "directory" and n.startswith(CHECKPOINT_PREFIX) for n, kind in names.items()):
        return latest_checkpoint(url, student=student)
    if TEACHER in names or STUDENT in names:
        raise ExportError(f"{url}: no {STATE} (an incomplete checkpoint)")
    raise ExportError(f"{url}: neither a checkpoint (no {STATE}) nor a run folder (no {CHECKPOINT_PREFIX}* folders)")


def _mismatch(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> str:
    """The first differing keys between a model and a state dict; empty when they match."""
    ours = model.state_dict()
    missing = [k for k in ours if k not in tensors]
    unexpected = [k for k in tensors if k not in ours]
    shapes = [f"{k} {tuple(tensors[k].shape)} vs {tuple(v.shape)}" for k, v in ours.items()
              if k in tensors and tensors[k].shape != v.shape]
    parts = [f"{what} {items[:3]}{' ...' if len(items) > 3 else ''}"
             for what, items in (("missing", missing), ("unexpected", unexpected), ("shape (file vs config)", shapes))
             if items]
    return "; ".join(parts)


def load_checkpoint(url: str, *, student: bool = False):
    """(model, state): the checkpoint's teacher (or student) in a rebuilt fp32 `ArkModel`, loaded
    with strict=True, and its state.json. A checkpoint of another model is an `ExportError`."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    from ark_dist.config import Config
    from ark_dist.configtree import from_dict
    from ark_dist.model import ArkModel

    fs, path = filesystem(url)
    state = _read_state(fs, posixpath.join(path, STATE), f"{url}/{STATE}")
    try:
        cfg = from_dict(Config, state["config"])
    except ValueError as exc:
        raise ExportError(f"{url}/{STATE}: {exc}") from None
    labels = state["labels"]
    foundation = bool(cfg.method.foundation.steps)  # heads per recipe step, not per dataset
    if not foundation and list(labels) != list(cfg.data.datasets):
        raise ExportError(f"{url}/{STATE}: label spaces for {list(labels)} but config datasets {cfg.data.datasets}")
    weights = STUDENT if student else TEACHER
    try:
        tensors = load(_read(fs, posixpath.join(path, weights), f"{url}/{weights}"))
    except SafetensorError as exc:
        raise ExportError(f"{url}/{weights}: not a readable safetensors file ({exc})") from None
    with torch.random.fork_rng(devices=[]):  # a library call leaves the caller's RNG alone
        if foundation:
            from ark_dist.model.foundation import FoundationModel

            sizes = {key: {n: len(v) for n, v in state.get(key, {}).items()} for key in ("boxes", "masks")}
            model = FoundationModel(cfg.model, classes={n: len(v) for n, v in labels.items()}, **sizes)
        else:
            model = ArkModel(cfg.model, heads={name: len(names) for name, names in labels.items()})
    problem = _mismatch(model, tensors)
    if problem:
        raise ExportError(f"{url}/{weights} does not match the model of its config ({cfg.model.backbone}, "
                          f"projector {cfg.model.projector}/{cfg.model.projector_dim}): {problem}")
    model.load_state_dict(tensors, strict=True)  # casts a bf16 student to the model's fp32
    return model.eval(), state


def exported_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """An `ArkModel`'s state under the export's keys: timm's backbone keys, `projector.*`,
    `omni_heads.<dataset>.*` (a `FoundationModel`'s also `loc_neck.*`, `loc_heads.<dataset>.*`,
    `seg_decoder.*`, `seg_heads.<dataset>.*`)."""
    out = {k.removeprefix("backbone."): v.detach().contiguous() for k, v in model.state_dict().items()}
    if len(out) != len(model.state_dict()):  # a backbone key equal to a projector/head key
        raise ExportError("backbone keys collide with projector/head keys once `backbone.` is stripped")
    return out


def metadata(model, state: dict, *, source: str, which: str) -> dict[str, str]:
    """The safetensors metadata: enough to rebuild the model and know where it came from (no secrets)."""
    cfg = model.config
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "model": which, "dtype": "float32",
            "backbone": cfg.backbone, "backbone_kwargs": json.dumps(cfg.backbone_kwargs, sort_keys=True),
            "num_features": str(model.backbone.num_features), "projector": cfg.projector,
            "projector_dim": str(cfg.projector_dim), "datasets": json.dumps(list(state["labels"])),
            "labels": json.dumps(state["labels"]), "cursor": json.dumps(state["cursor"]),
            "manifest_sha256": str(state["manifest_sha256"]), "source": _public(source),
            **{key: json.dumps(state[key]) for key in ("boxes", "masks") if state.get(key)}}


def outputs(out: str) -> tuple[str, str]:
    """(`.safetensors` path, `.pth.tar` path) for `--out`: either file's name, or a stem."""
    for suffix in (".safetensors", ".pth.tar"):
        if out.endswith(suffix):
            stem = out[: -len(suffix)]
            break
    else:
        stem = out
    if is_local(stem):
        stem = _public(stem)
    return f"{stem}.safetensors", f"{stem}.pth.tar"


def _check_writable(paths: tuple[str, ...]) -> None:
    """Fail before reading a (possibly large, remote) checkpoint when a local --out cannot be written."""
    for path in paths:
        folder = os.path.dirname(path)
        if not is_local(path):
            continue
        if not os.path.isdir(folder):
            raise ExportError(f"cannot write {path}: folder {folder} does not exist")
        if not os.access(folder, os.W_OK):
            raise ExportError(f"cannot write {path}: folder {folder} is not writable")
        if os.path.isdir(path):
            raise ExportError(f"cannot write {path}: it is a folder")


def _write(files: dict[str, bytes]) -> None:
    """Local: each to a temporary name in its folder, then all renamed into place (a reader never
    sees half a file). Remote: one PUT each (an S3 object appears whole or not at all)."""
    temps = {}
    try:
        for path, data in files.items():
            if is_local(path):
                temps[path] = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.tmp-{uuid.uuid4().hex}")
                with open(temps[path], "xb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
            else:
                fs, target = filesystem(path)
                fs.pipe_file(target, data)
        for path, temp in temps.items():
            os.replace(temp, path)
    except Exception as exc:  # noqa: BLE001 - one line naming the output, whatever the backend raised
        raise ExportError(f"cannot write {path}: {type(exc).__name__}: {exc}") from exc
    finally:
        for temp in temps.values():
            if os.path.exists(temp):
                os.remove(temp)


LAYOUTS = ("current", "legacy")  # today's timm | timm 0.5.4 / the official Swin release, as Ark's code pins


def export(checkpoint: str, out: str, *, student: bool = False, layout: str = "current") -> list[str]:
    """Export the teacher (or the student) of `checkpoint` (a checkpoint folder, or a run folder:
    its furthest complete checkpoint) to `out` as .safetensors and .pth.tar; returns both paths.
    `layout="legacy"`: the backbone as timm 0.5.4 keeps it and the heads numbered in the recipe's
    dataset order (`model/legacy.py`), for Ark's own code and BenchmarkTransformers."""
    if layout not in LAYOUTS:
        raise ExportError(f"--layout {layout!r}: one of {', '.join(LAYOUTS)}")
    paths = outputs(out)
    _check_writable(paths)
    source = resolve_checkpoint(checkpoint, student=student)
    model, state = load_checkpoint(source, student=student)
    if layout == "legacy":
        from ark_dist.model.legacy import legacy_tensors

        if state.get("boxes") or state.get("masks"):
            raise ExportError(f"{source}: --layout legacy holds Ark's classification heads only, and this "
                              "Foundation X checkpoint has box or mask heads (export it in the current layout)")
        tensors = legacy_tensors(model, list(state["labels"]))
    else:
        tensors = exported_tensors(model)
    from safetensors.torch import save

    buffer = io.BytesIO()
    torch.save(tensors, buffer)  # the flat {key: tensor} dict: loadable with weights_only=True
    meta = {**metadata(model, state, source=source, which="student" if student else "teacher"), "layout": layout}
    _write({paths[0]: save(tensors, metadata=meta), paths[1]: buffer.getvalue()})
    return list(paths)


def main(argv: list[str]) -> int:
    """The `export` subcommand: `argv` is what follows the word `export`."""
    p = argparse.ArgumentParser(prog="launch.py export",
                                description="A checkpoint's teacher (or student) as timm-layout .safetensors + .pth.tar")
    p.add_argument("--checkpoint", required=True,
                   help="a checkpoint folder, or a run folder (its furthest complete checkpoint); local or s3://")
    p.add_argument("--out", required=True,
                   help="FILE.safetensors, FILE.pth.tar or a stem; both files are written (local or s3://)")
    p.add_argument("--student", action="store_true", help="export the student instead of the EMA teacher")
    p.add_argument("--layout", choices=LAYOUTS, default="current",
                   help="legacy: timm 0.5.4's Swin keys and numbered heads, for Ark's code and BenchmarkTransformers")
    args = p.parse_args(argv)
    try:
        written = export(args.checkpoint, args.out, student=args.student, layout=args.layout)
    except ExportError as exc:
        print(f"error: {' '.join(str(exc).splitlines())}", file=sys.stderr)
        return 2
    print("\n".join(written))
    return 0

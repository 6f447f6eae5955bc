"""Loading pretrained weights: the official Swin release, timm's layout, or an Ark/ark-dist
checkpoint (continual training). Every load reports its missing and unexpected keys.

Only `torch.load(weights_only=True)` and safetensors: no arbitrary pickle from storage.
"""

from __future__ import annotations

import importlib
import io

import fsspec
import torch

from ark_dist.model.ark import ArkModel

CONTAINERS = ("teacher", "state_dict", "model", "module", "student")


def read_state_dict(url: str) -> dict[str, torch.Tensor]:
    """Tensors from a local path or fsspec URL (.safetensors, or a torch file of plain tensors)."""
    try:
        with fsspec.open(url, "rb") as f:
            data = f.read()
    except FileNotFoundError as exc:
        raise ValueError(f"pretrained weights not found: {url}") from exc
    if url.endswith(".safetensors"):
        from safetensors.torch import load

        return load(data)
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises UnpicklingError and friends for refused payloads
        raise ValueError(f"{url}: not a plain-tensor checkpoint (refused to unpickle arbitrary objects): {exc}") from exc
    for key in CONTAINERS:  # the Swin release nests under "model", Ark under "teacher"/"state_dict"
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict):
        raise ValueError(f"{url}: expected a state dict, found {type(obj).__name__}")
    return {k.removeprefix("module."): v for k, v in obj.items() if torch.is_tensor(v)}


def load_pretrained(model: ArkModel, url: str, *, log=print) -> tuple[list[str], list[str]]:
    """Load `url` into `model`: backbone keys (any of the three layouts), and the projector and
    heads where the checkpoint has them with matching shapes. Returns (missing, unexpected)."""
    state = read_state_dict(url)
    backbone = {k.removeprefix("backbone."): v for k, v in state.items()
                if not k.startswith(("projector.", "omni_heads.", "head"))}
    module = importlib.import_module(type(model.backbone).__module__)
    convert = getattr(module, "checkpoint_filter_fn", None)
    if convert is not None:  # e.g. the official Swin layout -> timm's (patch merging moved a stage on)
        backbone = convert(backbone, model.backbone)
    ours = model.state_dict()
    extra = {k: v for k, v in state.items() if k.startswith(("projector.", "omni_heads."))
             and k in ours and ours[k].shape == v.shape}
    merged = {f"backbone.{k}": v for k, v in backbone.items()} | extra
    result = model.load_state_dict(merged, strict=False)
    missing = [k for k in result.missing_keys if k.startswith("backbone.")]
    unexpected = list(result.unexpected_keys)
    log(f"loaded {url}: {len(merged) - len(unexpected)} tensors; backbone missing {len(missing)}"
        f"{' ' + str(missing[:5]) if missing else ''}; unexpected {len(unexpected)}"
        f"{' ' + str(unexpected[:5]) if unexpected else ''}; projector/heads from checkpoint: {len(extra)}")
    if len(missing) == len([k for k in ours if k.startswith("backbone.")]):
        raise ValueError(f"{url}: no backbone weight matches {model.config.backbone} (wrong model?)")
    return missing, unexpected

"""Loading pretrained weights: the official Swin release, timm's layout, or an Ark/ark-dist
checkpoint (continual training). Every load reports its missing and unexpected keys.

Only `torch.load(weights_only=True)` and safetensors: no arbitrary pickle from storage.
"""

from __future__ import annotations

import importlib
import io
import re

import fsspec
import torch

from ark_dist.model.ark import ArkModel

CONTAINERS = ("teacher", "state_dict", "model", "module", "student")
# Ark's releases number their heads `omni_heads.<i>` in its dataset order (Ark-6: MIMIC, CheXpert,
# ChestX-ray14, RSNA Pneumonia, VinDr-CXR, Shenzhen); these are our names for those datasets.
ARK_HEADS = ("mimic_cxr", "chexpert", "chestxray14", "rsna_pneumonia", "vindr_cxr", "shenzhen")
# Buffers the official Swin release (and timm 0.5.4) saves, which today's timm computes from the
# window size instead of loading.
REBUILT = ("relative_position_index", "attn_mask")


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
    heads where the checkpoint has them with matching shapes (an Ark release's `omni_heads.<i>`
    onto our heads by Ark's dataset order). Logs every tensor it drops. Returns (missing,
    unexpected): backbone tensors the file lacks, and file tensors that found no place."""
    state = read_state_dict(url)
    ours = model.state_dict()
    backbone, rebuilt = _backbone(state, model=model)
    extra, unfit = _projector_and_heads(state, ours=ours)
    result = model.load_state_dict(backbone | extra, strict=False)
    missing = [k for k in result.missing_keys if k.startswith("backbone.")]
    unexpected = list(result.unexpected_keys) + list(unfit)
    dropped = ([f"{k} [no such tensor in the model]" for k in result.unexpected_keys] + list(unfit.values())
               + [f"{k} [classifier, not used]" for k in state if k.startswith("head")])
    log(f"loaded {url}: {len(backbone) + len(extra) - len(result.unexpected_keys)} tensors; backbone missing "
        f"{_listed(missing)}; projector/heads from checkpoint: {len(extra)}; dropped {_listed(dropped)}"
        + (f"; {len(rebuilt)} {'/'.join(REBUILT)} buffers left for the model to rebuild" if rebuilt else ""))
    if len(missing) == len([k for k in ours if k.startswith("backbone.")]):
        raise ValueError(f"{url}: no backbone weight matches {model.config.backbone} (wrong model?)")
    return missing, unexpected


def _backbone(state: dict, *, model: ArkModel) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The file's backbone tensors in the model's layout, keyed `backbone.*`, and the names of the
    buffers left out because the model computes them itself."""
    ours = model.state_dict()
    tensors = {k.removeprefix("backbone."): v for k, v in state.items()
               if not k.startswith(("projector.", "omni_heads.", "head"))}
    rebuilt = [k for k in tensors if k.rsplit(".", 1)[-1] in REBUILT and f"backbone.{k}" not in ours]
    tensors = {k: v for k, v in tensors.items() if k not in rebuilt}
    module = importlib.import_module(type(model.backbone).__module__)
    convert = getattr(module, "checkpoint_filter_fn", None)
    if convert is not None:  # e.g. the official Swin layout -> timm's (patch merging moved a stage on)
        tensors = convert(tensors, model.backbone)
    return {f"backbone.{k}": v for k, v in tensors.items()}, rebuilt


def _projector_and_heads(state: dict, *, ours: dict) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The file's projector and head tensors that fit the model, under our names; and those that do
    not, each with why (file name -> reason)."""
    kept, unfit = {}, {}
    for name, tensor in state.items():
        if not name.startswith(("projector.", "omni_heads.")):
            continue
        target = _our_name(name)
        where = name if target == name else f"{name} as {target}"
        if target not in ours:
            unfit[name] = f"{where} [no such tensor in the model]"
        elif ours[target].shape != tensor.shape:
            unfit[name] = f"{where} [file {tuple(tensor.shape)}, model {tuple(ours[target].shape)}]"
        else:
            kept[target] = tensor
    return kept, unfit


def _our_name(name: str) -> str:
    """An Ark release numbers its heads (`omni_heads.3.weight`); ours are named
    (`omni_heads.rsna_pneumonia.weight`). Other names, ark-dist's own included, stay as they are."""
    numbered = re.fullmatch(r"omni_heads\.(\d+)\.(.+)", name)
    if numbered and int(numbered[1]) < len(ARK_HEADS):
        return f"omni_heads.{ARK_HEADS[int(numbered[1])]}.{numbered[2]}"
    return name


def _listed(items: list[str]) -> str:
    """`3 (a, b, c)`, or `0`: a count with every name, for one log line."""
    return f"{len(items)} ({', '.join(items)})" if items else "0"

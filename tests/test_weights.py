"""Pretrained files as they are published: the official Swin release and an Ark release (.pth.tar).

Both files are written here by hand from a tiny timm model, following the publishers' code (not
timm's converter), and that timm model is the oracle the loaded weights are compared against.
"""

from __future__ import annotations

import argparse
import itertools
import re

import pytest
import torch
import torch.nn.functional as F

from ark_dist.model import ArkModel, ModelConfig, load_pretrained
from conftest import TINY_SWIN

# Two blocks per stage, so the second block of each is a shifted-window block with an attn_mask.
TINY2 = {**TINY_SWIN, "depths": [2, 2]}
PATCH = 4  # swin_base_patch4: tokens per side in stage 0 = img_size / 4
# Ark's heads, numbered in Ark's dataset order, with Ark-6's label counts.
ARK_ORDER = {"mimic_cxr": 14, "chexpert": 14, "chestxray14": 14, "rsna_pneumonia": 3, "vindr_cxr": 6, "shenzhen": 1}


def ark(swin: dict, *, heads: dict[str, int], seed: int) -> ArkModel:
    torch.manual_seed(seed)
    model = ArkModel(ModelConfig(backbone_kwargs=swin, projector_dim=32), heads=heads)
    with torch.no_grad():  # LayerNorms start at 1/0: make them distinct so a mix-up would show
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def position_index(window: int) -> torch.Tensor:
    """WindowAttention.relative_position_index as the release computes it: (window^2, window^2)."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)  # (N, N, 2)
    return rel[..., 0] * (2 * window - 1) + rel[..., 1]


def shift_mask(side: int, window: int) -> torch.Tensor:
    """SwinTransformerBlock.attn_mask of a shifted block: (num_windows, window^2, window^2)."""
    shift, image = window // 2, torch.zeros(side, side)
    cuts = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    for region, (h, w) in enumerate(itertools.product(cuts, cuts)):
        image[h, w] = region
    windows = image.view(side // window, window, side // window, window).permute(0, 2, 1, 3).reshape(-1, window**2)
    mask = windows[:, None, :] - windows[:, :, None]
    return mask.masked_fill(mask != 0, -100.0)


def official_release(backbone: torch.nn.Module, *, swin: dict, num_classes: int = 1000) -> dict:
    """`backbone` (timm's layout) as github.com/microsoft/Swin-Transformer saves it
    (models/swin_transformer.py): patch merging at the END of stage i (timm: the start of stage
    i+1), a relative_position_index buffer in every block, an attn_mask only in shifted blocks
    (the others register None, which a state dict leaves out), and the classifier head.*."""
    out = {}
    for key, tensor in backbone.state_dict().items():
        merge = re.fullmatch(r"layers\.(\d+)\.downsample\.(.+)", key)
        if merge:  # the channel order needs no permutation: test_official_patch_merging_is_timms
            key = f"layers.{int(merge[1]) - 1}.downsample.{merge[2]}"
        out[key] = tensor.clone()
    window = swin["window_size"]
    for stage, depth in enumerate(swin["depths"]):
        side = swin["img_size"] // PATCH >> stage
        for block in range(depth):
            prefix = f"layers.{stage}.blocks.{block}."
            out[prefix + "attn.relative_position_index"] = position_index(min(window, side))
            if block % 2 == 1 and side > window:  # the release shifts odd blocks where windows tile the stage
                out[prefix + "attn_mask"] = shift_mask(side, window)
    out["head.weight"] = torch.randn(num_classes, backbone.num_features)
    out["head.bias"] = torch.randn(num_classes)
    return out


def ark_release(model: ArkModel, *, swin: dict) -> dict:
    """`model` as an Ark release (.pth.tar) stores it: timm 0.5.4's Swin (the official layout, with
    ImageNet's head.*), `projector.*`, heads numbered `omni_heads.<i>` in Ark's order, under
    "teacher" with DistributedDataParallel's `module.` prefix, beside the student and an epoch."""
    teacher = official_release(model.backbone, swin=swin)
    teacher |= {k: v.clone() for k, v in model.state_dict().items() if k.startswith("projector.")}
    for i, name in enumerate(ARK_ORDER):
        for part, tensor in model.omni_heads[name].state_dict().items():
            teacher[f"omni_heads.{i}.{part}"] = tensor.clone()
    student = {f"module.{k}": torch.zeros_like(v) for k, v in teacher.items()}
    return {"epoch": 200, "state_dict": student, "teacher": {f"module.{k}": v for k, v in teacher.items()}}


def assert_equal(ours: dict, oracle: dict) -> None:
    assert ours.keys() == oracle.keys()
    for key, tensor in oracle.items():
        assert torch.equal(ours[key], tensor), key


def test_official_patch_merging_is_timms():
    """The release concatenates the 2x2 neighbours as x[0::2, 0::2], x[1::2, 0::2], x[0::2, 1::2],
    x[1::2, 1::2], then norm and reduction: the same weights in timm's merge give the same output,
    so the release's downsample weights load unpermuted."""
    merge = ark(TINY2, heads={}, seed=0).backbone.layers[1].downsample
    x = torch.randn(2, 8, 8, 24)  # (B, H, W, C): stage 0's output
    cat = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)  # (B, 4, 4, 96)
    official = F.linear(F.layer_norm(cat, (96,), merge.norm.weight, merge.norm.bias), merge.reduction.weight)
    assert torch.allclose(merge(x), official, atol=1e-6)


def test_the_official_swin_release_loads_tensor_for_tensor(tmp_path):
    source = ark(TINY2, heads={}, seed=0)
    release = official_release(source.backbone, swin=TINY2)
    assert "layers.0.downsample.reduction.weight" in release and "layers.1.downsample.norm.weight" not in release
    masks = [k for k in release if k.endswith("attn_mask")]
    assert masks == ["layers.0.blocks.1.attn_mask", "layers.1.blocks.1.attn_mask"]  # the shifted blocks only
    path = tmp_path / "swin_base_patch4_window7_224_22kto1k.pth"
    torch.save({"model": release}, path)
    target, logged = ark(TINY2, heads={}, seed=1), []
    result = load_pretrained(target, str(path), log=logged.append)
    assert result == ([], [])
    assert_equal(target.backbone.state_dict(), source.backbone.state_dict())
    assert "head.weight [classifier" in logged[0] and "head.bias [classifier" in logged[0], logged


def test_an_ark_release_keeps_its_heads_projector_and_backbone(tmp_path):
    source = ark(TINY_SWIN, heads=ARK_ORDER, seed=0)
    torch.save(ark_release(source, swin=TINY_SWIN), tmp_path / "ark6_teacher.pth.tar")
    # Our heads are keyed by name, so their order must not matter: list them backwards.
    target, logged = ark(TINY_SWIN, heads=dict(reversed(ARK_ORDER.items())), seed=1), []
    result = load_pretrained(target, str(tmp_path / "ark6_teacher.pth.tar"), log=logged.append)
    assert result == ([], [])
    assert_equal(target.state_dict(), source.state_dict())


def test_tensors_that_do_not_fit_are_named_in_the_log(tmp_path):
    source = ark(TINY_SWIN, heads=ARK_ORDER | {"rsna_pneumonia": 2}, seed=0)  # RSNA as two classes here
    release = ark_release(source, swin=TINY_SWIN)
    release["teacher"]["module.omni_heads.6.weight"] = torch.zeros(5, 32)  # a seventh head: ours has six
    torch.save(release, tmp_path / "ark.pth.tar")
    target, logged = ark(TINY_SWIN, heads=ARK_ORDER, seed=1), []
    rsna = target.omni_heads["rsna_pneumonia"].weight.clone()
    _, unexpected = load_pretrained(target, str(tmp_path / "ark.pth.tar"), log=logged.append)
    line = logged[0]
    for dropped in ("omni_heads.3.weight as omni_heads.rsna_pneumonia.weight [file (2, 32), model (3, 32)]",
                    "omni_heads.3.bias as omni_heads.rsna_pneumonia.bias [file (2,), model (3,)]",
                    "omni_heads.6.weight [no such tensor in the model]"):
        assert dropped in line, line
    assert set(unexpected) == {"omni_heads.3.weight", "omni_heads.3.bias", "omni_heads.6.weight"}
    assert torch.equal(target.omni_heads["rsna_pneumonia"].weight, rsna), "a head that does not fit keeps its init"
    assert torch.equal(target.omni_heads["vindr_cxr"].weight, source.omni_heads["vindr_cxr"].weight)


def test_an_ark_dist_checkpoint_with_another_projector_names_what_it_drops(tmp_path):
    source = ArkModel(ModelConfig(backbone_kwargs=TINY_SWIN, projector_dim=16), heads={"chexpert": 14})
    torch.save({"teacher": source.state_dict()}, tmp_path / "ours.pth")
    target, logged = ark(TINY_SWIN, heads={"chexpert": 14}, seed=1), []
    load_pretrained(target, str(tmp_path / "ours.pth"), log=logged.append)
    for dropped in ("projector.weight [file (16, 48), model (32, 48)]", "projector.bias [file (16,), model (32,)]",
                    "omni_heads.chexpert.weight [file (14, 16), model (14, 32)]"):
        assert dropped in logged[0], logged
    assert_equal(target.backbone.state_dict(), source.backbone.state_dict())


def test_reuse_loads_a_published_ark_file_to_the_features_of_our_export_of_the_same_weights(tmp_path):
    """`init` for downstream work: an Ark release (.pth.tar, timm 0.5.4 layout, `omni_heads.0..5`)
    and ark-dist's export of the same weights give the same backbone features and head outputs."""
    from safetensors.torch import save_file

    from ark_dist.export import exported_tensors, metadata
    from ark_dist.reuse.init import load_model

    source = ark(TINY2, heads=ARK_ORDER, seed=0)
    torch.save(ark_release(source, swin=TINY2), tmp_path / "ark6_teacher.pth.tar")
    labels = {name: [f"{name}{k}" for k in range(size)] for name, size in ARK_ORDER.items()}
    state = {"labels": labels, "cursor": {"epoch": 200, "round": 0, "step": 0}, "manifest_sha256": "0" * 64}
    save_file(exported_tensors(source), tmp_path / "ours.safetensors",
              metadata=metadata(source, state, source="test", which="teacher"))
    ours, our_labels = load_model(str(tmp_path / "ours.safetensors"), log=lambda *_: None)
    published, their_labels = load_model(str(tmp_path / "ark6_teacher.pth.tar"), model=source.config, heads=labels,
                                         log=lambda *_: None)
    assert our_labels == their_labels == labels
    images = torch.randn(2, 3, TINY2["img_size"], TINY2["img_size"])
    with torch.no_grad():
        a, b = ours(images), published(images)
        assert torch.equal(ours.backbone(images), published.backbone(images))
    assert all(torch.equal(a.logits[k], b.logits[k]) for k in ARK_ORDER)


def test_a_published_ark_file_names_its_heads_and_loads_on_a_reuse_worker_as_our_export(tmp_path):
    """The reuse commands take a published Ark .pth.tar: its numbered heads get Ark-6's class names
    (`ARK_RELEASE_LABELS`, sized as the heads), its model the recipe's `model` section, and a worker
    loads it to the outputs of our export of the same weights."""
    import yaml
    from safetensors.torch import save_file

    from ark_dist.export import exported_tensors, metadata
    from ark_dist.reuse import workers
    from ark_dist.reuse.init import ARK_RELEASE_LABELS, describe, release_heads

    source = ark(TINY2, heads=ARK_ORDER, seed=4)
    published = tmp_path / "ark6_teacher.pth.tar"
    torch.save(ark_release(source, swin=TINY2), published)
    assert {k: len(v) for k, v in ARK_RELEASE_LABELS.items()} == ARK_ORDER  # Ark-6's head sizes, in Ark's order
    assert release_heads(str(published)) == ARK_RELEASE_LABELS
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"model": {"backbone_kwargs": TINY2, "projector_dim": 32}}))
    heads, spec = workers.weights([str(published)], argparse.Namespace(recipe=str(recipe)))
    assert heads == {str(published): ARK_RELEASE_LABELS} and spec[str(published)]["model"]["projector_dim"] == 32
    state = {"labels": ARK_RELEASE_LABELS, "cursor": {"epoch": 200, "round": 0, "step": 0}, "manifest_sha256": "0" * 64}
    save_file(exported_tensors(source), tmp_path / "ours.safetensors", metadata=metadata(source, state, source="t",
                                                                                         which="teacher"))
    assert describe(str(tmp_path / "ours.safetensors"), recipe=str(recipe)) == (ARK_RELEASE_LABELS, None)
    theirs, their_heads = workers.load_weights(str(published), {"published": spec}, rank=1)
    ours, our_heads = workers.load_weights(str(tmp_path / "ours.safetensors"), {}, rank=1)
    assert their_heads == our_heads == ARK_RELEASE_LABELS
    images = torch.randn(2, 3, TINY2["img_size"], TINY2["img_size"])
    with torch.no_grad():
        a, b = theirs(images), ours(images)
    assert all(torch.equal(a.logits[k], b.logits[k]) for k in ARK_ORDER)
    # A file with neither ark-dist's metadata nor numbered heads has no class names: one line.
    bare = tmp_path / "swin.pth"
    torch.save({"model": official_release(source.backbone, swin=TINY2)}, bare)
    with pytest.raises(ValueError, match="omni_heads.*its classes are unknown"):
        describe(str(bare), recipe=str(recipe))

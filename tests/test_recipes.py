"""The recipes in configs/: Ark-6 value for value (DESIGN 3), and each one runs its dry run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ark_dist.config import load
from conftest import ARK6, TINY_SWIN

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_ark6_is_the_published_recipe():
    cfg = load(CONFIGS / "ark6.yaml")
    assert cfg.data.datasets == ARK6  # MIMIC, CheXpert, ChestX-ray14, RSNA Pneumonia, VinDr-CXR, Shenzhen
    # Ark-6 starts from the official Swin release's ImageNet-22k model fine-tuned on 1k; Ark+ likewise for Swin-L.
    assert cfg.model.backbone == "swin_base_patch4_window7_224" and cfg.model.pretrained.endswith(
        "/swin_base_patch4_window7_224_22kto1k.pth")
    assert load(CONFIGS / "ark_plus.yaml").model.pretrained.endswith("/swin_large_patch4_window12_384_22kto1k.pth")
    assert (cfg.model.projector, cfg.model.projector_dim) == ("linear", 1376)
    o = cfg.optim
    assert (o.name, o.lr, o.momentum, o.nesterov, o.weight_decay) == ("sgd", 0.3, 0.9, True, 0.0)
    assert (o.warmup_epochs, o.min_lr, o.clip_grad) == (20, 1e-5, 0.0)
    t = cfg.train
    assert (t.epochs, t.global_batch, t.eval_every) == (200, 200, 10)
    m = cfg.method
    assert (m.momentum, m.consistency, m.ema, m.schedule) == (0.9, 0.5, "round", "cyclic")
    assert cfg.engine.grad_accum == 1 and t.global_batch % cfg.engine.num_workers == 0  # batch 200 per step
    assert cfg.data.max_steps_per_round is None
    chexpert = cfg.data.policy("chexpert")
    assert (chexpert.uncertain, tuple(chexpert.lsr_range), chexpert.blank) == ("lsr", (0.55, 0.85), "zero")
    for name in ("mimic_cxr", "chestxray14", "rsna_pneumonia", "shenzhen"):
        assert (cfg.data.policy(name).uncertain, cfg.data.policy(name).blank) == ("ones", "zero"), name
    assert cfg.data.policy("vindr_cxr").readers == "any"
    v = cfg.data.views
    assert (v.image_size, v.teacher, tuple(v.crop_scale), v.rotate_deg, v.photometric_p) == (
        224, "same_geometry", (0.08, 1.0), 10.0, 0.3)


def test_ark6_passes_its_dry_run_at_a_reduced_size(six_store, tmp_path, capsys):
    """The recipe as written, with only the size reduced (tiny Swin, 64 px) and the store and
    ImageNet weights pointed at local stand-ins: a timm-layout file of the tiny backbone."""
    import timm
    from safetensors.torch import save_file

    from ark_dist.train.cli import main

    torch.manual_seed(1)
    weights = tmp_path / "swin_base_patch4_window7_224.safetensors"
    save_file(timm.create_model("swin_base_patch4_window7_224", pretrained=False, **TINY_SWIN).state_dict(), weights)
    reduced = [f"data.store.url={six_store}", f"model.pretrained={weights}", "model.backbone_kwargs="
               + str(TINY_SWIN).replace("'", ""), "data.views.image_size=64", "data.views.load_size=72",
               "data.num_workers=0", "engine.use_gpu=false"]
    assert main(["--config", str(CONFIGS / "ark6.yaml"), "--dry-run", *reduced]) == 0
    out = capsys.readouterr().out
    assert "backbone missing 0" in out, out  # the ImageNet stand-in loaded completely
    assert "dry run: 6 datasets" in out and "one batch of 25 from mimic_cxr (25, 3, 64, 64)" in out


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_recipe_dry_runs_against_a_look_alike_store(path, request, capsys):
    """Ark's recipes on the six datasets' look-alikes, Foundation X's on the eleven's."""
    from ark_dist.train.cli import main

    cfg = load(path)
    store = request.getfixturevalue("eleven_store" if cfg.method.foundation.steps else "six_store")
    tiny = {**cfg.model.backbone_kwargs, **TINY_SWIN}  # every recipe's backbone, shrunk to fit a CI machine
    size = [f"model.backbone_kwargs={str(tiny).replace(chr(39), '')}", "data.views.image_size=64",
            "data.views.load_size=72"]
    args = ["--config", str(path), "--dry-run", f"data.store.url={store}", "model.pretrained=null",
            "data.num_workers=0", *size]
    assert main(args) == 0, capsys.readouterr().err

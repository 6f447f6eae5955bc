"""`launch.py explain`: a model that learned a local finding (a striped patch at a random place)
puts its Grad-CAM heat on the patch, not on the background; the command writes the PNG, the `--all`
grid, and refuses a class the model lacks in one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import ark_dist
from ark_dist.config import load as load_config
from ark_dist.config import to_dict
from ark_dist.data.views import IMAGENET_MEAN, IMAGENET_STD
from ark_dist.explain import heatmap, main
from ark_dist.release import release
from conftest import TINY_SWIN

SIDE, PATCH = 64, 20
MARGIN = 2.0  # the heat inside the patch is at least this many times the heat outside it, on average


def _image(rng: np.random.Generator, *, positive: bool) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 image, uint8 mask of the finding): a radiograph look-alike; a positive carries
    horizontal stripes in a PATCH-pixel square somewhere inside the centre crop."""
    from shards import synth

    pixels = synth.radiograph(rng, SIDE, SIDE)
    mask = np.zeros((SIDE, SIDE), np.uint8)
    if positive:
        y, x = rng.integers(8, SIDE - 8 - PATCH, size=2)
        stripes = 0.3 * np.sign(np.sin(2 * np.pi * np.arange(PATCH) / 6))[:, None]
        pixels[y:y + PATCH, x:x + PATCH] = np.clip(pixels[y:y + PATCH, x:x + PATCH] + stripes, 0, 1)
        mask[y:y + PATCH, x:x + PATCH] = 255
    return np.round(pixels * 255).astype(np.uint8), mask


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A release of a tiny Swin with one head (Shenzhen's), then trained in this process on the
    released model's own preprocessing until it detects the patch."""
    from safetensors.torch import save_file

    from ark_dist.model import ArkModel

    root = tmp_path_factory.mktemp("explain")
    cfg = load_config(None, ["data.datasets=[shenzhen]", f"model.backbone_kwargs={json.dumps(TINY_SWIN)}",
                             "model.projector_dim=32", f"data.views.image_size={SIDE}", "data.views.load_size=73",
                             f"data.store.url={root / 'none'}"])
    torch.manual_seed(0)
    folder = root / "checkpoint_000000"
    folder.mkdir()
    model = ArkModel(cfg.model, heads={"shenzhen": 1})
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "teacher.safetensors")
    (folder / "state.json").write_text(json.dumps({"cursor": {"epoch": 0, "round": 0, "step": 0},
                                                   "labels": {"shenzhen": ["Tuberculosis"]},
                                                   "manifest_sha256": "0" * 64, "config": to_dict(cfg)}))
    release(str(folder), str(root / "model"))
    released = ark_dist.load(str(root / "model"))
    rng = np.random.default_rng(1)
    images, labels = zip(*[(_image(rng, positive=bool(i % 2))[0], float(i % 2)) for i in range(256)])
    x, y = released.preprocess(list(images)), torch.tensor(labels)[:, None]
    optimizer = torch.optim.AdamW(released.parameters(), lr=2e-3)
    released.train()
    for step in range(300):
        batch = torch.from_numpy(np.random.default_rng(step).choice(len(x), 32, replace=False))
        logits = released.heads["shenzhen"](released.projector(released.backbone(x[batch])))
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    released.eval()
    return released, root


def test_the_heat_falls_on_the_finding_not_the_background(trained):
    model, _ = trained
    rng = np.random.default_rng(7)
    ratios, probabilities = [], []
    for _ in range(8):
        image, mask = _image(rng, positive=True)
        grey, heat, probability = heatmap(model, image, dataset="shenzhen", label="Tuberculosis")
        # The finding's place in the model's input: the mask through the same preprocessing.
        inside = (model.preprocess([mask])[0, 0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]).numpy() > 0.5
        assert heat.shape == grey.shape == inside.shape == (SIDE, SIDE) and 0 < inside.mean() < 0.5
        ratios.append(heat[inside].mean() / max(heat[~inside].mean(), 1e-6))
        probabilities.append(probability)
    assert np.mean(probabilities) > 0.9, probabilities  # the model found the finding...
    assert np.mean(ratios) >= MARGIN, ratios  # ...and its heat sits on it


def test_explain_writes_the_heatmap_and_the_grid_and_refuses_an_unknown_class(trained, tmp_path, capsys):
    from PIL import Image

    _, root = trained
    image, _ = _image(np.random.default_rng(3), positive=True)
    Image.fromarray(image).save(tmp_path / "cxr.png")
    argv = ["--model", str(root / "model"), "--image", str(tmp_path / "cxr.png")]
    assert main([*argv, "--target", "shenzhen:Tuberculosis", "--out", str(tmp_path / "one.png")]) == 0
    assert Image.open(tmp_path / "one.png").size == (SIDE, SIDE)
    assert main([*argv, "--all", "--top", "1"]) == 0
    assert (tmp_path / "cxr.png.all.cam.png").stat().st_size > 0
    assert "shenzhen: Tuberculosis" in capsys.readouterr().out
    assert main([*argv, "--target", "shenzhen:Nodule"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --target shenzhen:Nodule: no class 'Nodule' in shenzhen") and "\n" not in err

"""The look-alikes carry their labels: `shards synth` draws each class's finding into the pixels, so
a model can learn them (the demo's AUC table shows learning, not chance).

The oracle knows nothing of how synth draws a finding. Labels come from the native label files
through `labelfacts` (written from the datasets' documentation), pixels from the built store the
way the trainer sees them (decoded onto the canvas, then the evaluation's centre crop, or a small
rotated, re-lit crop like the student's), and the detector is generic: a ridge regression on the
image's power spectrum (log power in bins of frequency and orientation: blind to where a texture
sits), fitted on half of each source's images and scored by ROC AUC on the other half. On pixels
that do not show the labels (synth before its findings) every source scores about 0.5."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

import labelfacts
from conftest import build_store, read_store_samples
from shards.synth import synthesize_all

SOURCES = ["mimic_cxr", "chexpert", "chestxray14", "rsna_pneumonia", "vindr_cxr", "shenzhen"]
CANVAS, INPUT = 72, 64  # the demo's data.views.load_size and image_size


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """The six sources, 160 images each, built as the demo builds them (96-pixel JPEGs)."""
    raw, out = tmp_path_factory.mktemp("raw"), tmp_path_factory.mktemp("store")
    synthesize_all(raw, num_images=160, seed=3, scale=0.08, sources=SOURCES)
    return raw, build_store(raw, out, SOURCES, per_shard=64, max_side=96)


def truth(facts: dict, classes: list[str]) -> list[float]:
    """1 / 0 per head class, NaN where the file says uncertain (-1); readers by majority."""
    if facts.get("labels") is None:
        votes = list(facts["readers"].values())
        return [float(2 * sum(v[c] for v in votes) > len(votes)) for c in classes]
    value = {1: 1.0, 0: 0.0, None: 0.0, -1: float("nan")}
    return [value[facts["labels"][c]] for c in classes]


def centre_view(canvas: np.ndarray) -> np.ndarray:
    """The evaluation's view: the centre 87.5 % of the canvas at the input size."""
    margin = CANVAS * (1 - 0.875) / 2
    box = (margin, margin, CANVAS - margin, CANVAS - margin)
    return np.asarray(Image.fromarray(canvas).resize((INPUT, INPUT), Image.BILINEAR, box=box), dtype=np.float64)


def small_crop_view(canvas: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A student-like view at its hardest: 8-12 % of the canvas, rotated up to 10 degrees, with a
    contrast/brightness change or a gamma."""
    side = CANVAS * np.sqrt(rng.uniform(0.08, 0.12))
    x0, y0 = rng.uniform(0, CANVAS - side, size=2)
    img = Image.fromarray(canvas).rotate(rng.uniform(-10, 10), resample=Image.BILINEAR,
                                         center=(x0 + side / 2, y0 + side / 2))
    view = np.asarray(img.resize((INPUT, INPUT), Image.BILINEAR, box=(x0, y0, x0 + side, y0 + side))) / 255.0
    if rng.uniform() < 0.5:
        view = view * rng.uniform(0.8, 1.2) + rng.uniform(-0.2, 0.2)
    else:
        view = np.clip(view, 1e-6, 1) ** rng.uniform(0.8, 1.2)
    return np.clip(view, 0, 1) * 255


def spectrum(view: np.ndarray) -> np.ndarray:
    """Log power in 12 frequency x 12 orientation bins of a windowed view: (144,)."""
    window = np.outer(np.hanning(INPUT), np.hanning(INPUT))
    power = np.abs(np.fft.fft2((view - view.mean()) * window)) ** 2
    fy, fx = np.meshgrid(np.fft.fftfreq(INPUT) * INPUT, np.fft.fftfreq(INPUT) * INPUT, indexing="ij")
    radius = np.digitize(np.hypot(fx, fy), np.geomspace(1.5, INPUT / 2, 13)) - 1
    angle = (np.mod(np.arctan2(fy, fx), np.pi) / np.pi * 12).astype(int) % 12
    keep = (radius >= 0) & (radius < 12)
    bins = (radius * 12 + angle)[keep]
    mean = np.bincount(bins, power[keep], minlength=144) / np.maximum(np.bincount(bins, minlength=144), 1)
    return np.log(mean + 1e-8)


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    pos, neg = scores[labels == 1], scores[labels == 0]
    if len(pos) < 2 or len(neg) < 2:
        return None
    return float((pos[:, None] > neg[None]).mean() + 0.5 * (pos[:, None] == neg[None]).mean())


def held_out_aucs(features: np.ndarray, labels: np.ndarray, *, seed: int) -> list[float]:
    """Per class: ridge regression on half of the images, ROC AUC on the other half."""
    fit = np.random.default_rng(seed).permutation(len(features)) % 2 == 0
    mean, std = features[fit].mean(0), features[fit].std(0) + 1e-6
    x = np.c_[(features - mean) / std, np.ones(len(features))]
    aucs = []
    for k in range(labels.shape[1]):
        y = labels[:, k]
        known = ~np.isnan(y)
        a = x[fit & known]
        w = np.linalg.solve(a.T @ a + 10.0 * np.eye(a.shape[1]), a.T @ y[fit & known])
        auc = roc_auc(x[~fit & known] @ w, y[~fit & known])
        if auc is not None:
            aucs.append(auc)
    return aucs


def source_aucs(raw, out, source: str, view) -> list[float]:
    manifest = json.loads((out / "manifest.json").read_text())
    classes = manifest["datasets"][source]["labels"]  # the head classes (VinDr: Ark's six)
    facts = labelfacts.READERS[source](raw / source)
    samples = read_store_samples(out, source)
    ids = sorted(samples)
    canvases = [Image.open(io.BytesIO(samples[i]["_image"])).convert("L").resize((CANVAS, CANVAS), Image.BILINEAR)
                for i in ids]  # as the loader decodes a sample onto its canvas
    features = np.stack([spectrum(view(np.asarray(canvas))) for canvas in canvases])
    labels = np.array([truth(facts[samples[i]["id"]], classes) for i in ids])
    return held_out_aucs(features, labels, seed=1)


@pytest.mark.parametrize("source", SOURCES)
def test_a_generic_texture_detector_reads_every_sources_labels_off_its_pixels(store, source):
    raw, out = store
    aucs = source_aucs(raw, out, source, centre_view)
    assert aucs and np.mean(aucs) >= 0.9, (source, [round(a, 2) for a in aucs])


@pytest.mark.parametrize("source", SOURCES)
def test_the_findings_survive_a_small_rotated_relit_crop(store, source):
    rng = np.random.default_rng(2)
    raw, out = store
    aucs = source_aucs(raw, out, source, lambda canvas: small_crop_view(canvas, rng))
    assert aucs and np.mean(aucs) >= 0.8, (source, [round(a, 2) for a in aucs])

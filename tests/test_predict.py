"""`ark_dist.load` and `launch.py predict` on a release of a hand-built checkpoint (tiny Swin): a
stored sample written to a file scores what the evaluation path scores for it; 16-bit PNG and DICOM
score as their 8-bit windowing; bad files are one line naming the file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import ark_dist
from ark_dist.config import load as load_config
from ark_dist.config import to_dict
from ark_dist.data import Store, StoreConfig, read_manifest
from ark_dist.predict import main
from ark_dist.release import release
from conftest import TINY_SWIN, read_store_samples

DATASETS = ["chestxray14", "rsna_pneumonia"]


@pytest.fixture(scope="module")
def released(six_store, tmp_path_factory):
    """(release folder, the checkpoint's teacher, its config): a checkpoint folder as a run writes
    one (state.json, teacher.safetensors, metrics.jsonl), released."""
    from safetensors.torch import save_file

    from ark_dist.export import load_checkpoint
    from ark_dist.model import ArkModel

    root = tmp_path_factory.mktemp("release")
    cfg = load_config(None, [f"data.store.url={six_store}", f"data.datasets=[{', '.join(DATASETS)}]",
                             f"model.backbone_kwargs={json.dumps(TINY_SWIN)}", "model.projector_dim=32",
                             "data.views.image_size=64", "data.views.load_size=72", "data.num_workers=0"])
    manifest = read_manifest(Store(StoreConfig(url=str(six_store))))
    labels = {d: manifest[d]["labels"] for d in DATASETS}
    torch.manual_seed(0)
    model = ArkModel(cfg.model, heads={d: len(v) for d, v in labels.items()})
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    folder = root / "checkpoint_000001"
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "teacher.safetensors")
    state = {"cursor": {"epoch": 1, "round": 0, "step": 0}, "labels": labels, "manifest_sha256": "0" * 64,
             "config": to_dict(cfg)}
    (folder / "state.json").write_text(json.dumps(state))
    row = {"step": 4, "epochs_done": 1, "auc/val/chestxray14/teacher": 0.61, "auc/test/chestxray14/teacher": 0.62}
    (folder / "metrics.jsonl").write_text(json.dumps(row) + "\n")
    release(str(folder), str(root / "model"))
    teacher, _ = load_checkpoint(str(folder))
    return root / "model", teacher, cfg


def test_a_stored_sample_written_to_a_file_scores_what_the_evaluation_path_scores(released, six_store, tmp_path):
    from ark_dist.reuse.infer import infer

    folder, teacher, cfg = released
    entry = read_manifest(Store(StoreConfig(url=str(six_store))))["chestxray14"]
    expected = infer(teacher, entry, "test", data_config=cfg.data, rank=0, world=1, batch_size=4,
                     device=torch.device("cpu"), heads=["chestxray14"])
    samples = read_store_samples(six_store, "chestxray14")
    files = []
    for sample_id in expected["ids"]:
        path = tmp_path / f"{sample_id}.jpg"
        path.write_bytes(samples[sample_id]["_image"])
        files.append(str(path))
    model = ark_dist.load(str(folder))
    got = model.predict(files)
    labels = entry["labels"]
    scores = np.array([[p["chestxray14"][c] for c in labels] for p in got])
    np.testing.assert_allclose(scores, expected["scores"]["chestxray14"], atol=1e-4, rtol=0)
    assert all(abs(sum(p["rsna_pneumonia"].values()) - 1) < 1e-5 for p in got)  # a multi-class head: softmax
    features = model.embed(files[:2])
    assert features.shape == (2, teacher.backbone.num_features)
    assert model.detect(files[:2]) == model.segment(files[:2]) == [{}, {}]  # an Ark release has no box or mask heads


def _radiograph(seed: int = 0, side: int = 80) -> np.ndarray:
    from shards import synth

    return synth.radiograph(np.random.default_rng(seed), side, side)


def test_16_bit_png_and_dicom_score_as_their_8_bit_windowing(released, tmp_path, capsys):
    from shards import synth
    from shards.images import decode_original

    folder = released[0]
    pixels = _radiograph()
    synth.write_png16(tmp_path / "deep.png", pixels)
    synth.write_dicom(tmp_path / "scan.dcm", pixels, uid_seed="p1", monochrome1=True)
    for name in ("deep.png", "scan.dcm"):  # their 8-bit windowing, as `shards` makes it, saved as a plain PNG
        decode_original((tmp_path / name).read_bytes(), name=name).save(tmp_path / f"{name}.8bit.png")
    code = main(["--model", str(folder), "--json", *(str(tmp_path / n) for n in
                                                       ("deep.png", "deep.png.8bit.png", "scan.dcm", "scan.dcm.8bit.png"))])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    for name in ("deep.png", "scan.dcm"):
        a, b = out[str(tmp_path / name)], out[str(tmp_path / f"{name}.8bit.png")]
        for dataset in a:
            assert a[dataset] == pytest.approx(b[dataset], abs=1e-6)


def _truncated_png(path: Path) -> None:
    Image.fromarray((_radiograph() * 255).astype(np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:200])


def _dicom_without_pixels(path: Path) -> None:
    from shards import synth

    synth.write_dicom(path, _radiograph(), uid_seed="p2")
    import pydicom

    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(path)


@pytest.mark.parametrize("name, make, message", [
    ("notes.png", lambda p: p.write_text("not an image"), "not a readable image"),
    ("cut.png", _truncated_png, "not a readable image"),
    ("empty.dcm", _dicom_without_pixels, "unreadable DICOM"),
    ("dot.png", lambda p: Image.new("L", (1, 1)).save(p), "1x1 pixels is too small"),
])
def test_a_file_that_cannot_be_scored_is_one_line_naming_it(released, tmp_path, capsys, name, make, message):
    make(tmp_path / name)
    assert main(["--model", str(released[0]), str(tmp_path / name)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {tmp_path / name}: ") and message in err and "\n" not in err, err


def test_a_colour_image_is_converted_and_said_so(released, tmp_path, capsys):
    grey = (_radiograph() * 255).astype(np.uint8)
    Image.fromarray(grey).save(tmp_path / "grey.png")
    Image.fromarray(grey).convert("RGBA").save(tmp_path / "rgba.png")
    assert main(["--model", str(released[0]), "--json", str(tmp_path / "grey.png"), str(tmp_path / "rgba.png")]) == 0
    captured = capsys.readouterr()
    assert f"note: {tmp_path / 'rgba.png'}: RGBA colour image converted to grayscale" in captured.err
    out = json.loads(captured.out)
    assert out[str(tmp_path / "rgba.png")] == out[str(tmp_path / "grey.png")]  # grey in RGBA is the same grey


def test_a_folder_that_is_not_a_release_is_one_line(tmp_path, capsys):
    assert main(["--model", str(tmp_path), str(tmp_path / "x.png")]) == 2
    assert "not a release folder" in capsys.readouterr().err


def test_bench_predict_times_predict_against_a_plain_forward_of_the_same_tensors(released, tmp_path, capsys):
    """The bench's plain path is the model's own forward on `preprocess`'s tensors: its sigmoid is
    what `predict` returns, so the ratio compares the same work plus the files' decoding."""
    from ark_dist.bench_predict import main as bench, write_files

    model = ark_dist.load(str(released[0]))
    files = write_files(tmp_path, count=3, side=90)
    with torch.no_grad():
        logits = model.heads["chestxray14"](model.projector(model.backbone(model.preprocess(files))))
    got = torch.tensor([list(p["chestxray14"].values()) for p in model.predict(files)])
    torch.testing.assert_close(got, torch.sigmoid(logits), rtol=0, atol=1e-6)
    assert bench(["--tiny", "--files", "4", "--side", "64", "--repeats", "1", "--json", str(tmp_path / "b.json")]) == 0
    figures = json.loads((tmp_path / "b.json").read_text())
    assert figures["plain"] > 0 and figures["predict"] > 0
    assert "predict from files (decode included)" in capsys.readouterr().out


def test_report_heatmaps_explain_the_first_validation_images_of_every_dataset(released, six_store, tmp_path, capsys):
    from PIL import Image

    from ark_dist.heatmaps import validation_images
    from ark_dist.report import main as report_main

    folder, _, cfg = released
    run = folder.parent  # the run folder: its checkpoint_000001 and metrics.jsonl
    (run / "metrics.jsonl").write_text((run / "checkpoint_000001" / "metrics.jsonl").read_text())
    taken = validation_images(cfg, per_dataset=2)
    for dataset in DATASETS:
        stored = [i for i, facts in read_store_samples(six_store, dataset).items() if facts["_split"] == "val"]
        assert [s for d, s, _ in taken if d == dataset] == stored[:2]  # the split's first two, in shard order
    assert report_main([str(run), "--out", str(tmp_path / "report"), "--heatmaps", "2"]) == 0
    assert "heatmaps.png" in capsys.readouterr().out
    # One row of two panels per dataset: 3 x 3.3 inches a panel at 100 dpi.
    assert Image.open(tmp_path / "report" / "heatmaps.png").size == (600, 330 * len(DATASETS))
    assert report_main([str(run), "--out", str(tmp_path / "bad"), "--heatmaps", "-1"]) == 2
    assert capsys.readouterr().err.startswith("error: --heatmaps -1") and not (tmp_path / "bad").exists()

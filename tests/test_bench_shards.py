"""`bench shards` runs end to end on every kind of original, masks included (no timing is asserted:
the figures are for the notes, measured with the command itself)."""

from __future__ import annotations

import json

import numpy as np

from shards import bench, masks


def test_every_kind_converts_and_reports(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert bench.main(["--num-images", "2", "--repeats", "1", "--workers", "1", "--max-side", "64",
                       "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert set(report["kinds"]) == set(bench.KINDS)
    for kind, figures in report["kinds"].items():
        assert figures["num_images"] == 2 and figures["stored_decode_images_per_s"] > 0, kind
        assert figures["convert"]["1"]["images_per_s"] > 0, kind
    assert report["build"]["1"]["images"] == 2
    text = capsys.readouterr().out
    assert all(kind in text for kind in bench.KINDS)


def test_the_masked_kind_carries_a_disc_as_the_build_would_store_it():
    [(index, name, spec)] = bench.mask_tasks("dicom8_mask_1024", (64, 48))
    yy, xx = np.mgrid[0:48, 0:64]
    disc = ((xx - 64 * 0.6) ** 2 + (yy - 48 * 0.4) ** 2) < (0.12 * 64) ** 2
    assert (index, name) == (0, "Pneumothorax") and np.array_equal(masks.rasterize(spec, (64, 48)), disc)
    assert bench.mask_tasks("png8_1024", (64, 48)) == []

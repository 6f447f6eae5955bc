"""`data.decode: device`: the loader hands JPEG bytes over and the rank decodes the batch (issue 18
part 3). On this CPU the rank's decoder is torchvision's libjpeg-turbo; on a GPU it is nvJPEG
(tests/test_gpu.py). The oracle is the loader's own canvas: PIL, draft mode and all."""

from __future__ import annotations

import io
import json
import logging
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from ark_dist.data import Cursor, DataConfig, EvalLoader, Store, StoreConfig, canvases, dataset_entry, read_manifest
from ark_dist.data import train_loader
from ark_dist.data.config import ViewConfig
from ark_dist.data.device_decode import jpeg_size, pack
from ark_dist.data.stages import Counters, batched, decode, decode_image
from shards import synth

CPU = torch.device("cpu")


def _jpeg(pixels: np.ndarray, mode: str = "L", **kw) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(out, "JPEG", quality=95, **kw)
    return out.getvalue()


def _png(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "PNG")
    return out.getvalue()


def _radiograph(w: int, h: int, seed: int = 0) -> np.ndarray:
    return (synth.radiograph(np.random.default_rng(seed), w, h) * 255).astype(np.uint8)


def _undecodable(data: bytes) -> bytes:
    """A JPEG whose header reads but whose scan names Huffman tables it never defined: libjpeg
    (PIL's and torchvision's) refuses it outright."""
    sos = data.index(b"\xff\xda")
    count = data[sos + 4]
    out = bytearray(data)
    for c in range(count):
        out[sos + 6 + 2 * c] = 0x33
    return bytes(out)


def _on_device(data: bytes, side: int) -> np.ndarray:
    batch = {**pack([torch.frombuffer(bytearray(data), dtype=torch.uint8)]), "canvas": side, "ids": ["x"],
             "mask": torch.ones(1, 1), "valid": torch.ones(1, dtype=torch.bool)}
    return canvases(batch, CPU)[0, 0].numpy().astype(int)


def test_the_header_decides_who_decodes():
    pixels = _radiograph(90, 70)
    grey, colour = _jpeg(pixels), _jpeg(pixels, "RGB")
    assert jpeg_size(grey) == jpeg_size(colour) == (90, 70)
    assert jpeg_size(_jpeg(pixels, "RGB", progressive=True)) == (90, 70)
    assert jpeg_size(_png(pixels)) is None
    assert jpeg_size(grey[:-100]) is None, "a truncated JPEG is the loader's to count as bad"
    assert jpeg_size(_jpeg(pixels, "CMYK")) is None


@pytest.mark.parametrize("stored, side", [((96, 80), 72), ((96, 80), 96), ((300, 200), 512), ((512, 430), 224)])
def test_a_device_canvas_is_the_loader_canvas_within_one_level(stored, side):
    data = _jpeg(_radiograph(*stored), "RGB")
    expected, size = decode_image(data, side)
    assert size == stored
    assert np.abs(_on_device(data, side) - expected.astype(int)).max() <= 1


@pytest.mark.parametrize("stored, side", [((96, 80), 40), ((512, 512), 128), ((1024, 900), 256)])
def test_where_the_loader_decodes_in_draft_mode_the_canvases_stay_close(stored, side):
    data = _jpeg(_radiograph(*stored))
    expected, _ = decode_image(data, side)
    assert Image.open(io.BytesIO(data)).draft("L", (side, side)) is not None, "the loader takes the draft path here"
    diff = np.abs(_on_device(data, side) - expected.astype(int))
    assert diff.mean() < 1.0 and diff.max() <= 12, (diff.mean(), diff.max())


def _config(url, decode: str, load_size: int) -> DataConfig:
    return DataConfig(store=StoreConfig(url=str(url)), views=ViewConfig(image_size=32, load_size=load_size),
                      shuffle_buffer=8, num_workers=2, decode=decode)


@pytest.mark.parametrize("load_size", [72, 40])
def test_training_and_evaluation_streams_carry_the_same_batches_either_way(data_store, load_size):
    loader_cfg, device_cfg = _config(data_store, "loader", load_size), _config(data_store, "device", load_size)
    entry = dataset_entry(read_manifest(Store(loader_cfg.store)), "chexpert", splits=("train", "val", "test"))
    kwargs = dict(entry=entry, seed=3, cursor=Cursor(), rank=1, world=2, global_batch=2)
    pairs = list(zip(train_loader(config=loader_cfg, **kwargs), train_loader(config=device_cfg, **kwargs)))
    evals = [EvalLoader(entry=entry, config=c, split="test", seed=3, rank=0, world=1, batch_size=3)
             for c in (loader_cfg, device_cfg)]
    pairs += list(zip(*evals))
    assert len(pairs) > 4
    for ours, theirs in pairs:
        assert "image" not in theirs and (theirs["jpeg_end"] > theirs["jpeg_start"]).all(), "the loader decoded nothing"
        assert ours["ids"] == theirs["ids"]
        for key in ("target", "mask", "theta_student", "theta_teacher", "photo", "valid"):
            if key in ours:
                assert torch.equal(ours[key], theirs[key]), key
        diff = (canvases(theirs, CPU).int() - ours["image"].int()).abs()
        if load_size == 72:  # stored 96 px: no draft decode in the loader
            assert diff.max() <= 1
        else:
            assert diff.float().mean() < 1.0 and diff.max() <= 12
        assert theirs["valid"].all()


def _mixed_batch(side: int) -> tuple[dict, list[dict], Counters]:
    """Five samples through the loader's decode (device mode) and collate: a JPEG, a PNG, a
    truncated JPEG, a JPEG no decoder takes, a JPEG; each with one box and one known mask class."""
    images = [_radiograph(64, 60, seed) for seed in range(5)]
    parts = [{"jpg": _jpeg(images[0])}, {"png": _png(images[1])}, {"jpg": _jpeg(images[2])[:-300]},
             {"jpg": _undecodable(_jpeg(images[3]))}, {"jpg": _jpeg(images[4])}]
    samples = [{"key": f"ds/{i}", "shard": "s.tar", "parts": {**p, "json": json.dumps({"id": f"id{i}"}).encode()}}
               for i, p in enumerate(parts)]
    counters = Counters("ds", max_bad_fraction=0.5, min_bad=5)
    decoded = [dict(s, mask=torch.ones(2), target=torch.zeros(2), boxes=torch.tensor([[1.0, 2.0, 20.0, 30.0]]),
                    box_labels=torch.tensor([1]), masks=torch.ones(1, side, side, dtype=torch.uint8),
                    mask_known=torch.ones(1, dtype=torch.bool))
               for s in decode(samples, side, counters, on_device=True)]
    batch, = batched(decoded, 4, counters, partial=False)
    return batch, parts, counters


def test_a_mixed_batch_png_rows_by_the_loader_bad_rows_counted_or_blanked(caplog):
    """Four samples: a JPEG (left to the device), a PNG (the loader's), a truncated JPEG (the
    loader's: counted bad, dropped) and a JPEG whose header reads but which no decoder takes (the
    device's: blanked, masked out, named)."""
    batch, parts, counters = _mixed_batch(side := 48)
    assert counters.skipped == 1 and batch["ids"] == ["id0", "id1", "id3", "id4"]
    assert (batch["jpeg_end"] > batch["jpeg_start"]).tolist() == [True, False, True, True]
    assert batch["jpeg"].shape == (sum(len(parts[i]["jpg"]) for i in (0, 3, 4)),), "one flat buffer"
    assert batch["image"].shape == (4, 1, side, side)

    with caplog.at_level(logging.WARNING, logger="ark_dist.data.device_decode"):
        out = canvases(batch, CPU)
    assert batch["valid"].tolist() == [True, True, False, True]
    assert batch["mask"][2].sum() == 0 and batch["mask"][[0, 1, 3]].all()
    assert [len(b) for b in batch["boxes"]] == [len(b) for b in batch["box_labels"]] == [1, 1, 0, 1]
    assert batch["mask_known"][:, 0].tolist() == [True, True, False, True]
    assert out[2].max() == 0
    assert "id3" in caplog.text and "undecodable" in caplog.text
    for row, data in ((0, parts[0]["jpg"]), (1, parts[1]["png"]), (3, parts[4]["jpg"])):
        expected, _ = decode_image(data, side)
        assert (out[row, 0].int() - torch.from_numpy(expected.copy()).int()).abs().max() <= 1, row


@pytest.mark.parametrize("parts", [2, 4])
def test_micro_batches_decode_as_the_whole_batch_even_with_no_jpeg_left(parts):
    """Gradient accumulation splits a batch by rows: each micro-batch keeps its rows' slices of
    the one JPEG buffer, and a micro-batch of loader-decoded rows only (the PNG, with 4 parts)
    needs no decoder at all."""
    from ark_dist.train.step import micro_batches

    batch, _, _ = _mixed_batch(48)
    whole = canvases({**batch, "mask": batch["mask"].clone(), "valid": batch["valid"].clone()}, CPU)
    pieces = micro_batches(batch, parts)
    assert [int((p["jpeg_end"] > p["jpeg_start"]).sum()) for p in pieces] == ([1, 2] if parts == 2 else [1, 0, 1, 1])
    assert torch.equal(torch.cat([canvases(p, CPU) for p in pieces]), whole)


def test_decode_is_validated_naming_the_key():
    with pytest.raises(ValueError, match="data.decode='gpu'"):
        replace(DataConfig(), decode="gpu").validate()

"""Original decoding (8/16-bit PNG, JPEG, DICOM incl. MONOCHROME1), resizing, tar safety."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest
from PIL import Image

from shards import synth
from shards.images import EncodeOptions, ImageError, convert, decode_original, target_size
from shards.samples import read_tar, sanitize_id, write_tar


@pytest.fixture
def pixels():
    return synth.radiograph(np.random.default_rng(0), 200, 240)  # (240, 200) in [0, 1]


def _decoded(path):
    return np.asarray(decode_original(path.read_bytes(), name=path.name), dtype=np.float64)


def test_monochrome1_is_inverted_to_match_monochrome2(pixels, tmp_path):
    synth.write_dicom(tmp_path / "a.dcm", pixels, uid_seed="a", bits=12, monochrome1=False)
    synth.write_dicom(tmp_path / "b.dicom", pixels, uid_seed="b", bits=12, monochrome1=True)
    mono2, mono1 = _decoded(tmp_path / "a.dcm"), _decoded(tmp_path / "b.dicom")
    assert np.abs(mono2 - mono1).max() <= 1.0
    assert np.corrcoef(mono2.ravel(), pixels.ravel())[0, 1] > 0.99  # bright stays bright


def test_16bit_png_uses_the_full_8bit_range(pixels, tmp_path):
    synth.write_png16(tmp_path / "x.png", pixels, bits=12)
    assert Image.open(tmp_path / "x.png").mode.startswith("I")
    out = _decoded(tmp_path / "x.png")
    assert out.min() == 0 and out.max() == 255
    assert np.corrcoef(out.ravel(), pixels.ravel())[0, 1] > 0.999


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA"])
def test_8bit_png_any_mode_becomes_gray(pixels, tmp_path, mode):
    synth.write_png8(tmp_path / "x.png", pixels, mode=mode)
    img = decode_original((tmp_path / "x.png").read_bytes(), name="x.png")
    assert img.mode == "L" and img.size == (200, 240)


@pytest.mark.parametrize("fmt", ["jpeg", "png"])
def test_convert_keeps_aspect_and_caps_the_longer_side(pixels, tmp_path, fmt):
    big = synth.radiograph(np.random.default_rng(1), 900, 1200)
    synth.write_jpeg(tmp_path / "x.jpg", big)
    data, original, size = convert((tmp_path / "x.jpg").read_bytes(), name="x.jpg",
                                   options=EncodeOptions(max_side=256, format=fmt))
    assert original == (900, 1200) and size == (192, 256)
    stored = Image.open(io.BytesIO(data))
    assert stored.size == size and stored.mode == "L" and stored.format == fmt.upper()
    assert target_size(100, 80, 512) == (100, 80), "never upscaled"


@pytest.mark.parametrize("data,name", [(b"", "x.png"), (b"\x89PNG\r\n\x1a\n" + b"\0" * 50, "x.png"),
                                       (b"\xff\xd8\xff" + b"\0" * 40, "x.jpg"), (b"garbage" * 20, "x.dcm")])
def test_undecodable_inputs_raise_image_error(data, name):
    with pytest.raises(ImageError):
        decode_original(data, name=name)


def test_tar_is_deterministic_and_unsafe_members_are_refused():
    samples = [("ds/a", "png", b"1", b"{}"), ("ds/b", "png", b"2", b"{}")]
    assert write_tar(samples) == write_tar(samples)
    assert [k for k, _ in read_tar(write_tar(samples))] == ["ds/a", "ds/b"]
    for bad in ("../evil.json", "/abs.json", "ds/../../x.json"):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            info = tarfile.TarInfo(bad)
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
        with pytest.raises(ValueError, match="unsafe member"):
            list(read_tar(buf.getvalue()))


def test_ids_are_safe_keys():
    assert sanitize_id("00000001_000.png") == "00000001_000_png"
    assert sanitize_id("a/../b c") == "a____b_c"
    with pytest.raises(ValueError):
        sanitize_id("..")

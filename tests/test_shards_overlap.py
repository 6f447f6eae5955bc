"""`shards overlap`: the same picture in two datasets is found by its perceptual hash even re-encoded
at another size, no unrelated look-alikes match, origins match, and the exclude list holds the
train side of every train/evaluation match."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
from PIL import Image

from conftest import SOURCES, run_shards
from shards import overlap
from shards.overlap import Sample
from shards.samples import read_tar, write_tar
from shards.store import Store

COPIED = 5  # NIH look-alike images that a second "dataset" (in Shenzhen's layout) re-encodes


@pytest.fixture(scope="module")
def store(synth_root, tmp_path_factory):
    """The six look-alikes, except that Shenzhen's images are `COPIED` NIH images (resized to 70 %
    and saved again as PNG) plus its own: a set that took in another's pictures."""
    root = tmp_path_factory.mktemp("raw-overlap")
    nih = sorted((synth_root / "chestxray14").glob("images_*/images/*.png"))[:COPIED]
    shenzhen = root / "shenzhen" / "CXR_png"
    shenzhen.mkdir(parents=True)
    for path in sorted((synth_root / "shenzhen" / "CXR_png").glob("*.png")):
        (shenzhen / path.name).write_bytes(path.read_bytes())
    copies = {}
    for i, path in enumerate(nih):
        with Image.open(path) as img:
            small = img.convert("L").resize((round(img.width * 0.7), round(img.height * 0.7)), Image.LANCZOS)
        name = f"CHNCXR_{900 + i:04d}_0"
        small.save(shenzhen / f"{name}.png")
        copies[name] = path.stem
    out = tmp_path_factory.mktemp("store-overlap")
    for source in SOURCES:
        raw = root / source if source == "shenzhen" else synth_root / source
        code, _, err = run_shards("build", "--source", source, "--root", raw, "--out", out, "--quiet", "--workers", "1")
        assert code == 0, err
    return out, copies


def _splits(store, dataset: str) -> dict[str, str]:
    with open(store / dataset / "splits.csv", newline="") as f:
        return {row["id"]: row["split"] for row in csv.DictReader(f)}


def test_copies_are_found_by_hash_and_nothing_else_matches(store, tmp_path):
    out, copies = store
    code, text, err = run_shards("overlap", "--store", out, "--out", tmp_path / "report")
    assert code == 0, err
    with open(tmp_path / "report" / "pairs.csv", newline="") as f:
        pairs = list(csv.DictReader(f))
    found = {(p["id_a"], p["id_b"]) for p in pairs}
    # chestxray14 sorts before shenzhen: every pair is (NIH image, its copy), and there is no other
    assert found == {(nih, copy) for copy, nih in copies.items()}, pairs
    assert all(p["dataset_a"] == "chestxray14" and p["dataset_b"] == "shenzhen" and p["origin"] == "0"
               and 0 <= int(p["hash_distance"]) <= overlap.DEFAULT_DISTANCE for p in pairs)
    nih_split, shenzhen_split = _splits(out, "chestxray14"), _splits(out, "shenzhen")
    expected = sorted({f"chestxray14/{nih}" for copy, nih in copies.items()
                       if nih_split[nih] == "train" and shenzhen_split[copy] in ("val", "test")}
                      | {f"shenzhen/{copy}" for copy, nih in copies.items()
                         if shenzhen_split[copy] == "train" and nih_split[nih] in ("val", "test")})
    assert (tmp_path / "report" / "exclude.txt").read_text().split() == expected
    assert "| chestxray14 |" in (tmp_path / "report" / "overlap.md").read_text() and "wrote" in text


def test_a_store_built_before_hashes_is_hashed_from_its_images(store):
    """The JSON of an older store has no `phash`: the images are hashed instead, to the same value."""
    out, _ = store
    samples = overlap.collect(Store(str(out)), ["chestxray14"])
    shard = json.loads((out / "manifest.json").read_text())["datasets"]["chestxray14"]["splits"]["test"]["shards"][0]
    rewritten = []
    for key, parts in read_tar((out / shard["url"]).read_bytes()):
        facts = json.loads(parts["json"])
        del facts["phash"]
        rewritten.append((key, "jpg", parts["jpg"], json.dumps(facts).encode()))
    old = overlap._shard_samples(_BytesStore(write_tar(rewritten)), "chestxray14", "test", shard)
    assert [(s.id, s.phash) for s in old] == [(s.id, s.phash) for s in samples if s.split == "test"][:len(old)]


class _BytesStore:
    def __init__(self, data: bytes):
        self.data = data

    def read_bytes(self, rel: str) -> bytes:
        return self.data


def _sample(dataset, split, id, origin=None, bits=None):
    return Sample(dataset, split, id, origin, None if bits is None else bits.hex())


def test_origins_match_the_named_sample_and_each_other():
    """A re-annotation names the image it is (origin); two re-annotations of one image match too."""
    samples = [_sample("chestxray14", "train", "00000001_000"), _sample("chestxray14", "test", "00000002_000"),
               _sample("chestx_det", "test", "36204", origin="chestxray14/00000001_000"),
               _sample("nih_google", "val", "00000001_000", origin="chestxray14/00000001_000"),
               _sample("chestx_det", "train", "36205", origin="chestxray14/99999999_000"),
               # a sample that has an origin of its own is still the image another's origin names
               _sample("tbx11k", "train", "CHNCXR_0001_0", origin="shenzhen/CHNCXR_0001_0"),
               _sample("later", "test", "x1", origin="tbx11k/CHNCXR_0001_0")]
    found = overlap.matches(samples)
    pairs = {(m["a"].key, m["b"].key) for m in found}
    assert pairs == {("chestx_det/36204", "chestxray14/00000001_000"), ("chestx_det/36204", "nih_google/00000001_000"),
                     ("chestxray14/00000001_000", "nih_google/00000001_000"), ("later/x1", "tbx11k/CHNCXR_0001_0")}
    assert all(m["origin"] and m["distance"] is None for m in found)
    assert overlap.exclusions(found) == ["chestxray14/00000001_000", "tbx11k/CHNCXR_0001_0"]


def test_hash_distance_is_counted_in_bits_and_the_same_group_never_matches():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, size=32, dtype=np.uint8).tobytes()
    flipped = bytearray(base)
    for bit in range(5):  # 5 bits flipped
        flipped[bit * 3] ^= 1 << bit
    far = bytes(255 - b for b in base)  # every bit flipped
    samples = [_sample("a", "train", "x", bits=base), _sample("b", "test", "y", bits=bytes(flipped)),
               _sample("b", "test", "z", bits=base), _sample("c", "train", "w", bits=far)]
    found = {(m["a"].key, m["b"].key): m["distance"] for m in overlap.matches(samples, max_distance=5)}
    assert found == {("a/x", "b/y"): 5, ("a/x", "b/z"): 0}  # b/y and b/z share a group: not a pair
    assert overlap.matches(samples, max_distance=4) and ("a/x", "b/y") not in {
        (m["a"].key, m["b"].key) for m in overlap.matches(samples, max_distance=4)}


def test_an_unknown_dataset_is_one_line(store, tmp_path):
    out, _ = store
    code, _, err = run_shards("overlap", "--store", out, "--datasets", "padchest_typo", "--out", tmp_path)
    assert code == 2 and "padchest_typo" in err and len(err.strip().splitlines()) == 1


def test_stored_hash_survives_what_a_copy_does():
    """The margin the default rests on, on one look-alike: resized to 60 % and saved as JPEG q75, the
    copy stays within the default distance, and another look-alike is far beyond it."""
    from shards import synth
    from shards.images import image_hash

    rng = np.random.default_rng(7)
    a = Image.fromarray((synth.radiograph(rng, 256, 256) * 255).astype(np.uint8))
    b = Image.fromarray((synth.radiograph(rng, 256, 256) * 255).astype(np.uint8))
    buf = io.BytesIO()
    a.resize((154, 154), Image.LANCZOS).save(buf, "JPEG", quality=75)
    copy = Image.open(io.BytesIO(buf.getvalue()))
    assert image_hash(a) - image_hash(copy) <= overlap.DEFAULT_DISTANCE < image_hash(a) - image_hash(b)


@pytest.mark.slow
def test_a_chestx_det_made_of_nih_images_is_found_by_origin_and_hash(synth_root, tmp_path):
    """A ChestX-Det look-alike whose pictures are NIH look-alike images (as the real one's are):
    each mapped image matches its NIH image by origin and by hash, the two the map lacks by hash
    alone, and nothing else matches."""
    from shards.synth import synthesize_all

    root = synthesize_all(tmp_path / "raw", num_images=12, seed=0, scale=0.125, sources=["chestx_det"])["chestx_det"]
    nih = sorted((synth_root / "chestxray14").glob("images_*/images/*.png"))
    entries = [(split, entry["file_name"]) for split in ("train", "test")
               for entry in json.loads((root / f"ChestX_Det_{split}.json").read_text())]
    assert len(entries) <= len(nih)
    mapping, copies = {}, {}
    for k, ((split, name), source) in enumerate(zip(entries, nih)):
        (root / split / name).write_bytes(source.read_bytes())  # the same picture, as NIH's
        copies[name.removesuffix(".png")] = source.stem
        if k % 6 != 5:  # the map lacks a few (the images ChestX-Det added)
            mapping[name] = source.name
    (root / "mapping.json").write_text(json.dumps(mapping))
    store = tmp_path / "store"
    for source, raw in (("chestxray14", synth_root / "chestxray14"), ("chestx_det", root)):
        code, _, err = run_shards("build", "--source", source, "--root", raw, "--out", store, "--quiet",
                                  "--workers", "1")
        assert code == 0, err
    code, _, err = run_shards("overlap", "--store", store, "--out", tmp_path / "report")
    assert code == 0, err
    with open(tmp_path / "report" / "pairs.csv", newline="") as f:
        pairs = {(p["id_a"], p["id_b"]): p for p in csv.DictReader(f)}  # chestx_det sorts first
    assert set(pairs) == set(copies.items())
    mapped = {name.removesuffix(".png") for name in mapping}
    for (det, _), p in pairs.items():
        assert p["origin"] == str(int(det in mapped)) and p["hash_distance"] == "0", p

"""Shared fixtures: synthetic raw datasets, stores, and a real S3 endpoint (moto's HTTP server)."""

from __future__ import annotations

import io
import json
import logging
import re
import shutil
import socket
import threading
import uuid
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

from shards.cli import main as shards_main
from shards.samples import read_tar
from shards.synth import synthesize_all

logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's server logs every request

SOURCES = ["chestxray14", "chexpert", "mimic_cxr", "vindr_cxr", "rsna_pneumonia", "shenzhen"]


def run_shards(*argv: str) -> tuple[int, str, str]:
    """`python -m shards ARGV` in-process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = shards_main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def build_store(raw: Path, out: Path, sources: list[str], *, per_shard: int, max_side: int) -> Path:
    """`shards build` of each source's look-alike under `raw` into one store `out` (one worker)."""
    for source in sources:
        code, _, err = run_shards("build", "--source", source, "--root", raw / source, "--out", out, "--quiet",
                                  "--workers", "1", "--samples-per-shard", per_shard, "--max-side", max_side)
        assert code == 0, err
    return out


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """The six sources of `SOURCES`, 16 images each, at 1/8 of real size (read-only: copy before
    changing). Every other source's tests make its own look-alike."""
    root = tmp_path_factory.mktemp("raw")
    synthesize_all(root, num_images=16, seed=0, scale=0.125, sources=SOURCES)
    return root


def look_alike(tmp_path_factory, source: str) -> Path:
    """One source's look-alike, 16 images at 1/8 scale, in a folder of its own (read-only: copy
    before changing), for the tests of a source outside `SOURCES`."""
    out = tmp_path_factory.mktemp(f"raw-{source}")
    return synthesize_all(out, num_images=16, seed=0, scale=0.125, sources=[source])[source]


@pytest.fixture
def raw_copy(synth_root, tmp_path):
    """A writable copy of one source's raw folder."""

    def copy(source: str) -> Path:
        dest = tmp_path / "raw" / source
        shutil.copytree(synth_root / source, dest)
        return dest

    return copy


def read_store_samples(store_root: Path, dataset: str) -> dict[str, dict]:
    """Every sample of a local store's dataset, by id: its JSON facts plus `_split`, `_image` and
    `_members` (every tar member by extension, masks included)."""
    manifest = json.loads((store_root / "manifest.json").read_text())
    samples = {}
    for split, info in manifest["datasets"][dataset]["splits"].items():
        for shard in info["shards"]:
            for key, parts in read_tar((store_root / shard["url"]).read_bytes()):
                facts = json.loads(parts["json"])
                facts["_split"], facts["_image"] = split, parts.get("jpg") or parts.get("png")
                facts["_members"] = parts
                samples[facts["id"]] = facts
    return samples


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3 HTTP endpoint on loopback; the AWS variables point every client at it."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        mp.setenv("AWS_ENDPOINT_URL", endpoint)
        yield endpoint
    server.stop()


class StoppableS3:
    """A real S3 endpoint that a test stops (connections are refused) and starts again on the same
    port: moto's app behind a server of our own; moto keeps its buckets in this process, so they
    outlive a stop. A PUT/POST whose path matches `hold()` is parked until `release()`, then
    answered 503: an outage that catches a request in flight."""

    def __init__(self):
        from moto.server import DomainDispatcherApplication, create_backend_app

        self.app = DomainDispatcherApplication(create_backend_app)
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                    "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": self.url}
        self.server, self.pattern = None, None
        self.held, self.released = threading.Event(), threading.Event()
        self.held_from, self.held_path = None, None  # the parked request's client port and path
        self.start()

    def __call__(self, environ, start_response):
        pattern = self.pattern
        if pattern and environ["REQUEST_METHOD"] in ("PUT", "POST") and re.search(pattern, environ["PATH_INFO"]):
            self.pattern, self.held_from, self.held_path = None, int(environ["REMOTE_PORT"]), environ["PATH_INFO"]
            self.held.set()
            self.released.wait()
            start_response("503 Service Unavailable", [("Content-Type", "application/xml")])
            return [b"<Error><Code>ServiceUnavailable</Code><Message>outage</Message></Error>"]
        return self.app(environ, start_response)

    def start(self) -> None:
        from werkzeug.serving import make_server

        self.server = make_server("127.0.0.1", self.port, self, threaded=True)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def hold(self, pattern: str) -> None:
        self.held.clear()
        self.released.clear()
        self.pattern = pattern

    def release(self) -> None:
        self.released.set()


@pytest.fixture
def stoppable_s3():
    """A `StoppableS3` with a fresh bucket (`.bucket`), apart from the session's endpoint; the AWS
    variables point this process at it."""
    import boto3

    server = StoppableS3()
    with pytest.MonkeyPatch.context() as mp:
        for key, value in server.env.items():
            mp.setenv(key, value)
        server.bucket = f"ark-{uuid.uuid4().hex[:10]}"
        boto3.client("s3", endpoint_url=server.url).create_bucket(Bucket=server.bucket)
        yield server
    server.release()
    server.stop()


def upload_store(folder: Path, url: str) -> str:
    """A local store copied into a bucket (the endpoint from AWS_ENDPOINT_URL); returns its URL."""
    from ark_dist.fs import filesystem

    fs, path = filesystem(url)
    fs.put(f"{folder}/", path, recursive=True)
    return url


@pytest.fixture
def s3_bucket(s3_endpoint) -> str:
    """A fresh, empty bucket; returns its name."""
    import boto3

    name = f"ark-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def data_store(synth_root, tmp_path_factory) -> Path:
    """A local store for the data-plane tests: three datasets with uneven shard sizes."""
    out = tmp_path_factory.mktemp("datastore")
    for source, per_shard in (("chexpert", 3), ("vindr_cxr", 4), ("rsna_pneumonia", 5)):
        code, _, err = run_shards("build", "--source", source, "--root", synth_root / source, "--out", out,
                                  "--quiet", "--workers", "1", "--samples-per-shard", per_shard, "--max-side", "96")
        assert code == 0, err
    return out


ARK6 = ["mimic_cxr", "chexpert", "chestxray14", "rsna_pneumonia", "vindr_cxr", "shenzhen"]
TINY_SWIN = {"embed_dim": 24, "depths": [1, 1], "num_heads": [1, 2], "window_size": 4, "img_size": 64}


@pytest.fixture(scope="session")
def six_store(synth_root, tmp_path_factory) -> Path:
    """A local store with all six datasets (64-pixel images, 4 samples per shard) for training tests."""
    return build_store(synth_root, tmp_path_factory.mktemp("sixstore"), ARK6, per_shard=4, max_side=64)


@pytest.fixture(scope="session")
def clean(six_store, tmp_path_factory):
    """One uninterrupted tiny run, the reference every fault run must match: (teacher, round starts)."""
    import faultruns

    runs = tmp_path_factory.mktemp("clean")
    with faultruns.driver(faultruns.args(six_store, runs, "clean"), runs / "driver.log") as proc:
        text = faultruns.finish(proc, runs / "driver.log")
    assert not faultruns.resumed(text)
    return faultruns.final_teacher(runs / "clean"), faultruns.round_starts(runs / "clean")


@pytest.fixture(scope="session")
def signal_store(tmp_path_factory):
    """A Shenzhen-layout set whose label shows: every TB-positive image carries horizontal stripes
    (a texture that any crop, shift or rotation keeps), the negatives do not. 160 images, so the
    seeded val and test splits hold about 16 each."""
    import numpy as np

    from shards import synth

    raw, rng = tmp_path_factory.mktemp("signal"), np.random.default_rng(0)
    stripes = 0.25 * np.sign(np.sin(2 * np.pi * np.arange(64) / 8))[:, None]
    for i in range(160):
        pixels = synth.radiograph(rng, 64, 64)
        synth.write_png8(raw / "CXR_png" / f"CHNCXR_{i + 1:04d}_{i % 2}.png",
                         np.clip(pixels + stripes, 0, 1) if i % 2 else pixels)
    out = tmp_path_factory.mktemp("signalstore")
    code, _, err = run_shards("build", "--source", "shenzhen", "--root", raw, "--out", out, "--quiet",
                              "--workers", "1", "--samples-per-shard", "16", "--max-side", "64")
    assert code == 0, err
    return out


def tiny_export(path: Path, labels: dict[str, list[str]], *, seed: int) -> str:
    """A tiny Swin with these heads (random weights), exported as `launch.py export` writes it."""
    import torch
    from safetensors.torch import save_file

    from ark_dist.export import exported_tensors, metadata
    from ark_dist.model import ArkModel
    from ark_dist.model.config import ModelConfig

    torch.manual_seed(seed)
    model = ArkModel(ModelConfig(backbone="swin_tiny_patch4_window7_224", backbone_kwargs=TINY_SWIN, projector_dim=32),
                     heads={k: len(v) for k, v in labels.items()})
    state = {"labels": labels, "cursor": {"epoch": 1, "round": 0, "step": 0}, "manifest_sha256": "0" * 64}
    save_file(exported_tensors(model), path, metadata=metadata(model, state, source="test", which="teacher"))
    return str(path)


def _visible(raw: Path, *, num_images: int, side: int = 64) -> None:
    """ChestX-Det's layout, one finding: every other image carries a striped square (16-24 px,
    anywhere) labelled Nodule, with the square as its box and polygon."""
    import numpy as np

    from shards import synth

    rng = np.random.default_rng(0)
    entries = {"train": [], "test": []}
    for i in range(num_images):
        name, split = f"{40000 + i}.png", "test" if i % 5 == 4 else "train"
        pixels = synth.radiograph(rng, side, side)
        syms, boxes, polygons = [], [], []
        if i % 2:
            size = int(rng.integers(16, 25))
            x, y = (int(v) for v in rng.integers(4, side - 4 - size, size=2))
            stripes = 0.3 * np.sign(np.sin(2 * np.pi * np.arange(size) / 6))[:, None]
            pixels[y:y + size, x:x + size] = np.clip(pixels[y:y + size, x:x + size] + stripes, 0, 1)
            x1, y1 = x + size - 1, y + size - 1
            syms, boxes, polygons = ["Nodule"], [[x, y, x1, y1]], [[[x, y], [x1, y], [x1, y1], [x, y1], [x, y]]]
        entries[split].append({"file_name": name, "syms": syms, "boxes": boxes, "polygons": polygons})
        synth.write_png8(raw / split / name, pixels)
    for split in entries:
        (raw / f"ChestX_Det_{split}.json").write_text(json.dumps(entries[split]))


@pytest.fixture(scope="session")
def visible_store(tmp_path_factory) -> Path:
    """Foundation X's learnable look-alike (`_visible`, 400 images), built as a store."""
    raw, out = tmp_path_factory.mktemp("fx-raw"), tmp_path_factory.mktemp("fx-store")
    _visible(raw, num_images=400)
    code, _, err = run_shards("build", "--source", "chestx_det", "--root", raw, "--out", out, "--quiet",
                              "--workers", "1", "--samples-per-shard", "32", "--max-side", "64")
    assert code == 0, err
    return out


ELEVEN = ["chexpert", "chestxray14", "vindr_cxr", "shenzhen", "mimic_cxr", "tbx11k", "node21", "candid_ptx",
          "rsna_pneumonia", "chestx_det", "siim_acr"]


@pytest.fixture(scope="session")
def eleven_store(tmp_path_factory) -> Path:
    """Look-alikes of the eleven datasets Foundation X trains on, 24 images each."""
    raw, out = tmp_path_factory.mktemp("fx11-raw"), tmp_path_factory.mktemp("fx11-store")
    synthesize_all(raw, num_images=24, seed=0, scale=0.125, sources=ELEVEN)
    return build_store(raw, out, ELEVEN, per_shard=8, max_side=64)

"""Builds of different datasets into one store at the same time, as a cluster runs them (one job per
dataset): every entry lands in the manifest and `verify` passes, on a local folder and on S3.
Before `manifest.publish`, the last two builds to finish read the same manifest and one entry was lost."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from conftest import SOURCES, run_shards
from shards.manifest import MANIFEST, PARTS, Manifest, publish
from shards.store import Store

REPO = Path(__file__).resolve().parents[1]


def _build_all_at_once(synth_root: Path, store: str) -> None:
    """`python -m shards build` of every current source, all started before any ends."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-m", "shards", "build", "--source", source, "--root",
                               str(synth_root / source), "--out", store, "--quiet", "--workers", "1",
                               "--samples-per-shard", "8"], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for source in SOURCES]
    for source, proc in zip(SOURCES, procs):
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"{source}: {err}"


@pytest.mark.slow
@pytest.mark.parametrize("where", ["local", "s3"])
def test_six_builds_started_at_once_all_land_in_the_manifest(where, synth_root, tmp_path, request):
    store = str(tmp_path / "store") if where == "local" else f"s3://{request.getfixturevalue('s3_bucket')}/cxr"
    _build_all_at_once(synth_root, store)
    manifest = Manifest.load(Store(store))
    assert sorted(manifest.datasets) == sorted(SOURCES)
    code, out, _ = run_shards("verify", "--store", store)
    assert code == 0 and f"in {len(SOURCES)} datasets" in out and " 0 bad" in out, out


def test_a_store_built_before_manifest_parts_keeps_its_entries(synth_root, tmp_path):
    """An old store has manifest.json only: a new build adds its entry and keeps the others."""
    store = tmp_path / "store"
    for source in SOURCES[:2]:
        code, _, err = run_shards("build", "--source", source, "--root", synth_root / source, "--out", store,
                                  "--quiet", "--workers", "1")
        assert code == 0, err
    for part in (store / PARTS).iterdir():  # as the store was before this change
        part.unlink()
    (store / PARTS).rmdir()
    old = json.loads((store / MANIFEST).read_text())["datasets"]
    code, _, err = run_shards("build", "--source", SOURCES[2], "--root", synth_root / SOURCES[2], "--out", store,
                              "--quiet", "--workers", "1")
    assert code == 0, err
    datasets = json.loads((store / MANIFEST).read_text())["datasets"]
    assert sorted(datasets) == sorted(SOURCES[:3])
    assert all(datasets[name] == old[name] for name in SOURCES[:2])


class _ReadersMeet(Store):
    """A store whose first read of the manifest waits until every other build has read it too: the
    interleaving that lost an entry (both read, both write) happens every time, not by chance."""

    def __init__(self, url: str, barrier: threading.Barrier):
        super().__init__(url)
        self.barrier, self.met = barrier, False

    def read_bytes(self, rel: str) -> bytes:
        data = super().read_bytes(rel)
        if rel == MANIFEST and not self.met:
            self.met = True
            self.barrier.wait(timeout=30)
        return data


@pytest.mark.parametrize("where", ["local", "s3"])
def test_builds_that_read_the_manifest_together_both_land(where, tmp_path, request):
    url = str(tmp_path / "store") if where == "local" else f"s3://{request.getfixturevalue('s3_bucket')}/cxr"
    Manifest(datasets={"old": {"name": "old", "splits": {}}}).save(Store(url))
    names = ["a", "b", "c"]
    barrier, errors = threading.Barrier(len(names)), []

    def land(name):
        try:
            publish(_ReadersMeet(url, barrier), {"name": name, "splits": {}})
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=land, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    assert sorted(Manifest.load(Store(url)).datasets) == ["a", "b", "c", "old"]

"""A run folder whose Ray Train snapshot was cut off mid-write (a driver killed while Ray rewrote
it): the driver moves it aside and the workers resume from ark-dist's own record of the latest
checkpoint; without a record, one line says what and where. Locally and in a bucket. (The whole
path, from a killed driver to the teacher of an uninterrupted run: tests/faults/test_kill.py.)"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from ark_dist.fs import filesystem, join
from ark_dist.train.resume import LATEST, SNAPSHOT, recorded, recorded_checkpoint, repair


def _folder(request, tmp_path) -> str:
    if request.param == "local":
        return str(tmp_path / "run")
    return f"s3://{request.getfixturevalue('s3_bucket')}/runs/run"


@pytest.fixture(params=["local", "s3"])
def run(request, tmp_path) -> str:
    """A run folder with two checkpoint folders, as Ray Train lays them out."""
    url = _folder(request, tmp_path)
    for name in ("checkpoint_2026-11-29_10-00-00.000001", "checkpoint_2026-11-29_10-00-05.000002"):
        _write(join(url, name, "state.json"), b"{}")
    return url


def _write(url: str, data: bytes) -> None:
    fs, path = filesystem(url)
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    fs.pipe_file(path, data)


def _names(url: str) -> set[str]:
    fs, path = filesystem(url)
    return {p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False)}


def test_a_readable_snapshot_is_left_alone(run):
    snapshot = json.dumps({"ray_version": "2.60.0", "checkpoint_results": []}).encode()
    _write(join(run, SNAPSHOT), snapshot)
    repair(run)
    fs, path = filesystem(join(run, SNAPSHOT))
    assert fs.cat_file(path) == snapshot


def test_a_cut_off_snapshot_is_moved_aside_and_the_record_names_the_checkpoint(run, caplog):
    newest = "checkpoint_2026-11-29_10-00-05.000002"
    _write(join(run, SNAPSHOT), b"")
    _write(join(run, LATEST), json.dumps({"checkpoint": newest}).encode())
    with caplog.at_level(logging.WARNING, logger="ark_dist.train.resume"):
        repair(run)
    names = _names(run)
    assert SNAPSHOT not in names, names  # Ray would refuse to start on it
    [aside] = [n for n in names if n.startswith(f"{SNAPSHOT}.unreadable-")]
    assert f"resuming from {join(run, newest)}" in caplog.text and aside in caplog.text
    assert recorded(run) == join(run, newest)
    checkpoint = recorded_checkpoint(run)
    with checkpoint.as_directory() as folder:  # Ray reads it through the run's own filesystem
        assert json.loads((Path(folder) / "state.json").read_text()) == {}


def test_a_cut_off_snapshot_without_a_record_is_one_line_that_names_it(run):
    _write(join(run, SNAPSHOT), b'{"ray_version": "2.6')
    with pytest.raises(ValueError) as err:
        repair(run)
    assert "\n" not in str(err.value) and join(run, SNAPSHOT) in str(err.value) and LATEST in str(err.value)
    assert SNAPSHOT in _names(run)  # nothing moved: the user decides


def test_no_record_or_a_record_of_a_deleted_checkpoint_gives_no_checkpoint(run):
    assert recorded(run) is None and recorded_checkpoint(run) is None
    _write(join(run, LATEST), json.dumps({"checkpoint": "checkpoint_gone"}).encode())
    assert recorded(run) is None

"""The run folder's disk fails under a running job: it turns read-only, then it fills up.

The run folder lives on a small tmpfs of its own (mounting one needs root, as CI has). Each fault is
one clear error line naming the folder and the cause; the checkpoints written before it still load:
the next run resumes from them, and once the disk is healthy again the run ends with the teacher of
an uninterrupted run.
"""

from __future__ import annotations

import os
import subprocess

import pytest

import faultruns as fr


def _mount(*argv: str) -> None:
    subprocess.run(["mount", *argv], check=True, capture_output=True, text=True)


@pytest.fixture
def disk(tmp_path):
    """A 64 MiB tmpfs at tmp_path/disk, unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs for the run folder needs root (CI runs as root)")
    path = tmp_path / "disk"
    path.mkdir()
    _mount("-t", "tmpfs", "-o", "size=64m", "tmpfs", str(path))
    yield path
    subprocess.run(["umount", "-l", str(path)], check=False)


def _fill(path) -> int:
    """Write zeros into `path` until the disk is full; returns the bytes written."""
    written = 0
    with open(path, "wb") as out:
        try:
            while True:
                out.write(b"\0" * (1 << 20))
                out.flush()
                written += 1 << 20
        except OSError:
            pass
    return written


@pytest.mark.slow
def test_a_read_only_then_full_run_folder_is_a_clear_error_and_the_last_checkpoint_still_loads(six_store, disk,
                                                                                                 tmp_path, clean):
    teacher, starts = clean
    run = disk / "disk"
    argv = fr.args(six_store, disk, "disk", "train.max_failures=0")
    # 1. Read-only once a mid-round checkpoint exists: the next checkpoint cannot be written.
    with fr.driver(argv, tmp_path / "ro.log") as proc:
        fr.wait_for("a mid-round checkpoint", lambda: fr.mid_round(run), proc, tmp_path / "ro.log")
        # A read-only bind mount over the run folder (a remount of the whole tmpfs would be refused
        # while Ray holds files open for writing there).
        _mount("--bind", str(run), str(run))
        _mount("-o", "remount,ro,bind", str(run))
        text = fr.finish(proc, tmp_path / "ro.log", code=1)
    [line] = fr.error_lines(text)
    print(f"read-only: {line}")
    assert "Read-only file system" in line and str(disk) in line, line
    # 2. Writable again: the run resumes from what was there; then the disk fills up.
    subprocess.run(["umount", str(run)], check=True)
    reached = max(fr.checkpoints(run).values())
    with fr.driver(argv, tmp_path / "full.log") as proc:
        fr.wait_for("a resume", lambda: fr.resumed((tmp_path / "full.log").read_text()), proc, tmp_path / "full.log")
        filled = _fill(disk / "filler")
        text = fr.finish(proc, tmp_path / "full.log", code=1)
    [line] = fr.error_lines(text)
    print(f"full ({filled / 2**20:.0f} MiB of filler): {line}")
    assert "No space left on device" in line and str(disk) in line, line
    [cursor] = fr.resumed(text)
    assert 0 < fr.step(starts, cursor) <= fr.step(starts, reached), "the previous checkpoint did not load"
    # 3. Room again: the same command finishes, to the teacher of an uninterrupted run.
    (disk / "filler").unlink()
    with fr.driver(argv, tmp_path / "healthy.log") as proc:
        text = fr.finish(proc, tmp_path / "healthy.log")
    assert fr.resumed(text)
    fr.assert_same_teacher(teacher, fr.final_teacher(run))

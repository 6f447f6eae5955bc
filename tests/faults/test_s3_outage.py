"""The object store goes away: moto's S3 server, stopped under a running training job.

For a few seconds while shards stream, and in the middle of a checkpoint upload: the reads and the
upload are retried (the shard reader's own backoff; botocore's standard retries for the run folder)
and the run ends with the teacher of an uninterrupted one, without restarting its workers. For good:
the run fails with one error line naming the endpoint, and the last complete checkpoint in the
bucket is intact: re-running the same command once the endpoint is back resumes from it.
"""

from __future__ import annotations

import re
import time

import pytest

import faultruns as fr
from conftest import upload_store

RETRY = re.compile(r"retrying read of (\S+) .*?attempt (\d+) of \d+ failed")


def retried(text: str) -> list[tuple[str, int]]:
    """The (shard, attempt) pairs the shard reader logged as failed and retried."""
    return sorted({(m.group(1), int(m.group(2))) for m in RETRY.finditer(text)})


@pytest.mark.slow
def test_an_endpoint_down_for_seconds_while_shards_stream_is_waited_out(stoppable_s3, six_store, tmp_path, clean):
    """Stop the endpoint once a mid-round checkpoint exists, until a read has failed and been
    retried (3 s at least), then start it again: no worker restarts, same teacher."""
    teacher, _ = clean
    store = upload_store(six_store, f"s3://{stoppable_s3.bucket}/store")
    run, log = tmp_path / "runs" / "stream", tmp_path / "stream.log"
    with fr.driver(fr.args(store, tmp_path / "runs", "stream"), log, fr.env(**stoppable_s3.env)) as proc:
        fr.wait_for("a mid-round checkpoint", lambda: fr.mid_round(run), proc, log)
        stoppable_s3.stop()
        down = time.monotonic()
        fr.wait_for("a retried read", lambda: retried(log.read_text()), proc, log, timeout=60)
        time.sleep(max(0.0, 3 - (time.monotonic() - down)))
        stoppable_s3.start()
        outage = time.monotonic() - down
        text = fr.finish(proc, log)
    retries = retried(text)
    names = ", ".join(f"{shard.rsplit('/', 1)[-1]} #{attempt}" for shard, attempt in retries)
    print(f"endpoint down {outage:.1f} s while streaming: {len(retries)} failed read attempt(s) retried ({names}); "
          f"no restart")
    assert not fr.resumed(text), "the workers restarted: the reads were not retried in place"
    fr.assert_same_teacher(teacher, fr.final_teacher(run))


@pytest.mark.slow
def test_an_endpoint_down_during_a_checkpoint_upload_is_waited_out(stoppable_s3, six_store, tmp_path, clean):
    """Park a checkpoint upload's request, stop the endpoint, answer the parked request 503, start
    the endpoint 5 s later: the upload is retried and completes, no worker restarts, same teacher."""
    teacher, _ = clean
    runs = f"s3://{stoppable_s3.bucket}/runs"
    run, log = f"{runs}/upload", tmp_path / "upload.log"
    with fr.driver(fr.args(six_store, runs, "upload"), log, fr.env(**stoppable_s3.env)) as proc:
        fr.wait_for("a checkpoint", lambda: fr.checkpoints(run), proc, log)
        stoppable_s3.hold(r"/checkpoint_2")
        fr.wait_for("a checkpoint upload", stoppable_s3.held.is_set, proc, log)
        stoppable_s3.stop()
        down = time.monotonic()
        stoppable_s3.release()
        time.sleep(5)
        stoppable_s3.start()
        outage = time.monotonic() - down
        text = fr.finish(proc, log)
    print(f"endpoint down {outage:.1f} s during a checkpoint upload (the request in flight answered 503): "
          f"uploaded on retry, no restart")
    assert not fr.resumed(text), "the workers restarted: the upload was not retried in place"
    fr.assert_same_teacher(teacher, fr.final_teacher(run))


@pytest.mark.slow
def test_an_endpoint_gone_for_good_is_one_error_naming_it_and_the_last_checkpoint_resumes(stoppable_s3, six_store,
                                                                                          tmp_path, clean):
    """Shards and checkpoints in the bucket; the endpoint stops for good after a mid-round
    checkpoint: one error line naming the endpoint. Started again, the same command resumes from a
    complete checkpoint and ends with the uninterrupted teacher."""
    teacher, starts = clean
    store, runs = upload_store(six_store, f"s3://{stoppable_s3.bucket}/store"), f"s3://{stoppable_s3.bucket}/runs"
    run = f"{runs}/gone"
    argv = fr.args(store, runs, "gone", "train.max_failures=0")
    with fr.driver(argv, tmp_path / "gone.log", fr.env(**stoppable_s3.env)) as proc:
        fr.wait_for("a mid-round checkpoint", lambda: fr.mid_round(run), proc, tmp_path / "gone.log")
        stoppable_s3.stop()
        down = time.monotonic()
        text = fr.finish(proc, tmp_path / "gone.log", code=1)
        failed = time.monotonic() - down
    [line] = fr.error_lines(text)
    print(f"endpoint gone: the run failed {failed:.0f} s later with: {line}")
    assert stoppable_s3.url in line, line
    stoppable_s3.start()
    reached = max(fr.checkpoints(run).values())
    with fr.driver(fr.args(store, runs, "gone"), tmp_path / "again.log", fr.env(**stoppable_s3.env)) as proc:
        text = fr.finish(proc, tmp_path / "again.log")
    [cursor] = fr.resumed(text)
    assert 0 < fr.step(starts, cursor) <= fr.step(starts, reached)
    fr.assert_same_teacher(teacher, fr.final_teacher(run))

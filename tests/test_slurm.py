"""The project's own sbatch script on a real one-node Slurm cluster (slurmctld + slurmd + munge,
started by cluster/slurm/local-cluster.sh), training against shards in moto's S3 server, with the
checkpoints in the same bucket; and `launch.py slurm`, which fills the script in."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import TINY_SWIN, run_shards

ROOT = Path(__file__).resolve().parents[1]
LOCAL_CLUSTER = ROOT / "cluster" / "slurm" / "local-cluster.sh"
TINY = str(TINY_SWIN).replace("'", "")
SECRET_KEY = "s3-secret-8d1f0c-never-print"
WANDB_KEY = "wandb-key-5e7a9b-never-print"


def slurm_command(*argv: str, env: dict, check: bool = True) -> str:
    done = subprocess.run(list(argv), env=env, capture_output=True, text=True, timeout=60)
    if check:
        assert done.returncode == 0, f"{' '.join(argv)}: {done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def slurm_conf(tmp_path_factory) -> str:
    if not shutil.which("slurmctld") or not shutil.which("munged"):
        pytest.fail("Slurm is not installed: `make slurm` installs Debian's slurm-wlm and munge (as root)")
    folder = tmp_path_factory.mktemp("slurm")
    done = subprocess.run(["bash", str(LOCAL_CLUSTER), "start", str(folder)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    yield str(folder / "slurm.conf")
    subprocess.run(["bash", str(LOCAL_CLUSTER), "stop", str(folder)], timeout=60)


@pytest.fixture(scope="module")
def s3_store(s3_endpoint, synth_root, tmp_path_factory) -> str:
    import boto3

    bucket = "ark-slurm"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=bucket)
    for source in ("chexpert", "shenzhen"):
        code, _, err = run_shards("build", "--source", source, "--root", synth_root / source,
                                  "--out", f"s3://{bucket}/store", "--endpoint-url", s3_endpoint, "--quiet",
                                  "--workers", "1", "--samples-per-shard", "4", "--max-side", "64")
        assert code == 0, err
    return bucket


def job_env(slurm_conf: str) -> dict:
    """What a user's login shell holds: the cluster, the store's credentials and a W&B key."""
    return {**os.environ, "SLURM_CONF": slurm_conf, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "WANDB_API_KEY": WANDB_KEY}


def job_state(job: str, env: dict) -> dict[str, str]:
    line = slurm_command("scontrol", "show", "job", "-o", job, env=env)
    return dict(part.split("=", 1) for part in line.split() if "=" in part)


def wait_for(predicate, *, timeout: float, what: str, every: float = 2.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if value := predicate():
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def processes_of(job: str) -> list[str]:
    """Every process on this machine that a Slurm job started carries SLURM_JOB_ID in its environment."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if f"SLURM_JOB_ID={job}".encode() in (proc / "environ").read_bytes().split(b"\0"):
                found.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()[:120])
        except (OSError, ValueError):
            continue
    return found


def bucket_objects(bucket: str, prefix: str) -> dict[str, bytes]:
    import boto3

    s3 = boto3.client("s3")
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            for o in page.get("Contents", [])]
    return {key: s3.get_object(Bucket=bucket, Key=key)["Body"].read() for key in keys}


def slurm_logs(slurm_conf: str, lines: int = 15) -> str:
    """The last lines of slurmctld's and slurmd's logs, for a failure message."""
    out = []
    for log in sorted((Path(slurm_conf).parent / "log").glob("*.log")):
        out += [f"\n--- {log.name}", *log.read_text(errors="replace").splitlines()[-lines:]]
    return "\n".join(out)


def registered_checkpoints(bucket: str, run: str) -> list[str]:
    """The checkpoints Ray Train has registered for the run (what a restart resumes from)."""
    import boto3

    try:
        body = boto3.client("s3").get_object(Bucket=bucket, Key=f"{run}/checkpoint_manager_snapshot.json")["Body"]
    except Exception:  # not written yet
        return []
    return re.findall(r"checkpoint_[0-9_.-]+", body.read().decode())


@pytest.mark.slurm
@pytest.mark.slow
def test_a_job_requeued_before_its_time_limit_resumes_finishes_and_leaves_nothing_behind(
        slurm_conf, s3_store, tmp_path):
    env = job_env(slurm_conf)
    bucket, name = s3_store, "slurm-tiny"
    overrides = [f"data.store.url=s3://{bucket}/store", "data.datasets=[chexpert, shenzhen]", "data.num_workers=0",
                 "data.views.image_size=64", "data.views.load_size=72", "data.shuffle_buffer=16",
                 f"model.backbone_kwargs={TINY}", "model.projector_dim=32", "train.epochs=4", "train.global_batch=4",
                 "train.eval_every=4", f"train.storage_path=s3://{bucket}/runs", f"train.name={name}",
                 "tracking.wandb=disabled", "engine.num_workers=2"]
    script, log = tmp_path / "job.sbatch", tmp_path / "job-%j.log"
    out = slurm_command(sys.executable, "launch.py", "slurm", "--config", "configs/demo.yaml", *overrides,
                        "--cpus-per-node", "2", "--time", "20", "--out", str(script), "--log", str(log),
                        "--submit", env=env)
    job = re.search(r"submitted job (\d+)", out).group(1)
    log = Path(str(log).replace("%j", job))

    # Near its time limit Slurm sends SIGUSR1 to the batch shell (--signal=B:USR1@...); send it now,
    # once Ray Train has registered a checkpoint in the bucket.
    first = wait_for(lambda: registered_checkpoints(bucket, f"runs/{name}"), timeout=400,
                     what="a registered checkpoint")
    slurm_command("scancel", "--signal=USR1", "--batch", job, env=env)
    wait_for(lambda: job_state(job, env)["JobState"] == "PENDING", timeout=120, what="the job to be requeued")
    assert job_state(job, env)["Restarts"] == "1"
    # Slurm holds the requeued job until its old credential expires (cred_expire=15 on the test
    # cluster), then starts it again by itself.
    state = wait_for(lambda: (s := job_state(job, env))["JobState"] in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT")
                     and s, timeout=500, what="the requeued job to end", every=3)
    text = log.read_text()
    assert (state["JobState"], state["ExitCode"]) == ("COMPLETED", "0:0"), text[-4000:] + slurm_logs(slurm_conf)

    # The second start resumed from a checkpoint of the first, not from the beginning.
    first_start, second_start = [m.start() for m in re.finditer(r"job \d+ \(restart \d\)", text)]
    assert "requeueing" in text[first_start:second_start]
    # Ray was stopped without waiting out a node drain (30 s per node by default).
    assert "Draining for up to" not in text, text[first_start:second_start][-3000:]
    resumed = re.search(r"resumed at epoch (\d+), round (\d+), step (\d+)", text[second_start:])
    assert resumed and resumed.groups() != ("0", "0", "0"), text[second_start:][-3000:]
    assert first  # the checkpoint it resumed from was registered before the signal

    # The run finished and its checkpoints are in the bucket.
    objects = bucket_objects(bucket, f"runs/{name}/")
    latest = sorted({k.split("/")[2] for k in objects if "/checkpoint_" in k and k.endswith("state.json")})[-1]
    state_json = json.loads(objects[f"runs/{name}/{latest}/state.json"])
    assert state_json["cursor"]["epoch"] == 4, state_json["cursor"]
    assert f"runs/{name}/{latest}/teacher.safetensors" in objects
    rows = [json.loads(line) for line in objects[f"runs/{name}/metrics.jsonl"].decode().splitlines()]
    assert rows[-1]["epochs_done"] == 4 and "auc/test/mean/teacher" in rows[-1]

    # Nothing of the job is left: no process, no Ray folder.
    assert processes_of(job) == []
    assert not Path(f"/tmp/ray-ark-{job}").exists()
    # No secret in what the job printed, in the script or in the run folder; Ray ran with a token.
    assert "auth token" in text
    for blob in [text.encode(), script.read_bytes(), *objects.values()]:
        assert SECRET_KEY.encode() not in blob and WANDB_KEY.encode() not in blob


def test_launch_slurm_fills_in_sizes_and_the_command(tmp_path):
    out = tmp_path / "ark6.sbatch"
    done = subprocess.run([sys.executable, "launch.py", "slurm", "--config", "configs/ark6.yaml",
                           "train.name=ark6:a", "data.datasets=[chexpert, shenzhen]", "engine.num_workers=16", "train.global_batch=320", "--gpus-per-node", "8",
                           "--partition", "gpu", "--account", "radiology", "--time", "48:00:00", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    text = out.read_text()
    header = re.findall(r"^#SBATCH (.+)$", text, flags=re.M)
    for option in ("--nodes=2", "--gpus-per-node=8", "--partition=gpu", "--account=radiology", "--time=48:00:00",
                   "--job-name=ark6-a", "--requeue", "--signal=B:USR1@300"):
        assert option in header, (option, header)
    # The recipe's own cpus_per_worker (loader processes) x 8 GPUs + 1 for the driver and Ray.
    assert "--cpus-per-task=" in " ".join(header)
    assert (f"set -- train --config {ROOT / 'configs' / 'ark6.yaml'} train.name=ark6:a 'data.datasets=[chexpert, "
            "shenzhen]' engine.num_workers=16 train.global_batch=320") in text
    assert subprocess.run(["bash", "-n", str(out)]).returncode == 0
    assert os.access(out, os.X_OK)


@pytest.mark.parametrize("args, message", [
    (["--gpus-per-node", "8", "--nodes", "1", "engine.num_workers=16", "train.global_batch=320"], "1 node(s) x 8 GPUs hold fewer than the 16"),
    (["--gpus-per-node", "8", "engine.use_gpu=false"], "--gpus-per-node needs engine.use_gpu=true"),
    (["engine.num_wrkers=2"], "config key 'engine.num_wrkers': unknown key"),
])
def test_launch_slurm_refuses_a_size_that_cannot_hold_the_run(tmp_path, args, message):
    out = tmp_path / "x.sbatch"
    done = subprocess.run([sys.executable, "launch.py", "slurm", "--config", "configs/ark6.yaml", *args,
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not out.exists()

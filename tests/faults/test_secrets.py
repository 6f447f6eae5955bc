"""Secrets set in the environment never land anywhere a run writes.

The S3 keys and the W&B key are set the way a cluster sets them (environment variables). A whole
path then runs through them as separate commands: build shards into a bucket of moto's S3 server,
train on them with checkpoints in the bucket and W&B offline, export the teacher, draw the report,
and hit an unreachable endpoint. Every object in the bucket and every file under the test's
folders are grepped for the secret values: the shards and manifests, the checkpoints, metrics.jsonl,
config.yaml, the W&B files, Ray's session logs and the exports. So is every line the commands
printed, exception messages included."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from conftest import TINY_SWIN, _free_port

REPO = Path(__file__).resolve().parents[2]
TINY = str(TINY_SWIN).replace("'", "")
SECRETS = {
    "AWS_ACCESS_KEY_ID": "AKIAARKDISTSECRET0001",
    "AWS_SECRET_ACCESS_KEY": "ark-dist-secret-access-key-7c0f9e2b51",
    "WANDB_API_KEY": "ark0dist0wandb0key0" + "5" * 21,  # 40 characters, as W&B's keys are
}


def run(argv: list[str], env: dict, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "launch.py"), *argv], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def files_under(*folders: Path) -> list[Path]:
    return [p for folder in folders for p in folder.rglob("*") if p.is_file() and not p.is_symlink()]


@pytest.mark.slow
def test_no_secret_from_the_environment_reaches_any_file_or_message(s3_endpoint, s3_bucket, synth_root, tmp_path):
    import boto3

    work = tmp_path / "work"
    work.mkdir()
    ray_tmp = Path(tempfile.mkdtemp(prefix="rs-", dir="/tmp"))  # Ray's session logs (short: socket paths)
    env = {**os.environ, **SECRETS, "PYTHONPATH": str(REPO), "RAY_TMPDIR": str(ray_tmp), "WANDB_MODE": "offline"}
    outputs = []

    for source in ("chexpert", "shenzhen"):
        done = run(["shards", "build", "--source", source, "--root", str(synth_root / source),
                    "--out", f"s3://{s3_bucket}/store", "--quiet", "--workers", "1", "--samples-per-shard", "4",
                    "--max-side", "64"], env, work)
        assert done.returncode == 0, done.stderr
        outputs.append(done)
    train = [f"data.store.url=s3://{s3_bucket}/store", "data.datasets=[chexpert, shenzhen]", "data.num_workers=0",
             "data.views.image_size=64", "data.views.load_size=72", f"model.backbone_kwargs={TINY}",
             "model.projector_dim=32", "train.epochs=1", "train.global_batch=4", "train.eval_every=1",
             f"train.storage_path=s3://{s3_bucket}/runs", "train.name=secrets", "tracking.wandb=offline",
             f"tracking.dir={work / 'wandb-files'}"]
    done = run(["train", "--config", str(REPO / "configs" / "demo.yaml"), *train], env, work)
    assert done.returncode == 0, done.stderr[-3000:]
    outputs.append(done)
    for argv in (["export", "--checkpoint", f"s3://{s3_bucket}/runs/secrets", "--out", str(work / "teacher")],
                 ["report", f"s3://{s3_bucket}/runs/secrets", "--out", str(work / "report")],
                 ["shards", "verify", "--store", f"s3://{s3_bucket}/store"]):
        done = run(argv, env, work)
        assert done.returncode == 0, done.stderr[-3000:]
        outputs.append(done)
    # An error message on the way: the store's endpoint unreachable.
    done = run(["train", "--config", str(REPO / "configs" / "demo.yaml"), *train,
                f"data.store.endpoint_url=http://127.0.0.1:{_free_port()}", "data.store.retries=1"], env, work)
    assert done.returncode == 2 and "error:" in done.stderr
    outputs.append(done)

    s3 = boto3.client("s3")
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=s3_bucket)
            for o in page.get("Contents", [])]
    blobs = {f"s3://{s3_bucket}/{k}": s3.get_object(Bucket=s3_bucket, Key=k)["Body"].read() for k in keys}
    local = files_under(work, ray_tmp)
    blobs.update({str(p): p.read_bytes() for p in local})
    blobs.update({f"output of command {i}": (d.stdout + d.stderr).encode() for i, d in enumerate(outputs)})
    # The run really wrote what we grep: checkpoints, metrics, config, W&B files, Ray's logs, exports.
    assert any(k.endswith("teacher.safetensors") for k in keys) and any(k.endswith("config.yaml") for k in keys)
    assert any(k.endswith("manifest.json") for k in keys)
    assert any(".wandb" in p.name for p in local) and any(p.suffix == ".log" for p in local)
    assert (work / "teacher.safetensors").is_file() and (work / "report" / "summary.md").is_file()
    leaks = [(where, name) for where, data in blobs.items() for name, secret in SECRETS.items()
             if secret.encode() in data]
    shutil.rmtree(ray_tmp, ignore_errors=True)
    assert leaks == [], leaks
    assert len(blobs) > 50

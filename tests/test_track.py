"""W&B tracking: offline runs written and read back with our reader of wandb's own file format,
secrets kept out of them, rank 0 only, mode selection, resume under a stable run id."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pytest

from ark_dist.config import load, to_dict
from ark_dist.track import runfolder
from ark_dist.track.config import TrackingConfig
from ark_dist.track.tracker import NullTracker, WandbTracker, open_tracker, wandb_dir, wandb_mode, without_secrets
from wandbfiles import read_offline_runs

SECRET = "hunter2"
WANDB_VARIABLES = ["WANDB_API_KEY", "WANDB_MODE", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_BASE_URL", "WANDB_CONFIG_DIR",
                   "WANDB_DIR", "WANDB_PROJECT", "WANDB_ENTITY", "WANDB_RUN_GROUP", "WANDB_NAME", "NETRC"]


@pytest.fixture(autouse=True)
def no_wandb_credentials(tmp_path, monkeypatch) -> Path:
    """No API key anywhere: no W&B variables, and a HOME with no netrc or wandb settings file."""
    for name in WANDB_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    return home


def make_config(tmp_path: Path, *overrides: str):
    return load(overrides=[f"train.storage_path={tmp_path / 'runs'}", "train.name=tiny", *overrides])


def open_for(cfg, *, rank: int = 0):
    return open_tracker(cfg, rank=rank, run_dir=runfolder.run_url(cfg), run_id=runfolder.run_id(cfg))


def all_bytes(folder: Path) -> bytes:
    return b"".join(path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file())


def metrics_only(row: dict) -> dict:
    return {key: value for key, value in row.items() if key not in ("_runtime", "_timestamp")}


def test_offline_run_reads_back_what_was_logged_and_no_secret(tmp_path, caplog):
    cfg = make_config(
        tmp_path,
        f"data.store.endpoint_url=http://minio:{SECRET}@host:9000",
        f"data.store.url=s3://AKIAEXAMPLE:{SECRET}@bucket/store",
        f"model.backbone_kwargs={{api_key: {SECRET}, embed_dim: 24}}",
        "tracking.wandb=offline", "tracking.project=proj", "tracking.group=grp", "tracking.run_name=first",
        "tracking.tags=[tiny, cpu]",
    )
    tracker = open_for(cfg)
    assert isinstance(tracker, WandbTracker)
    rows = [
        {"loss/chexpert": 0.7, "lr": 0.01, "ema/momentum": 0.9, "consistency/coef": 0.5, "data/skipped/chexpert": 0},
        {"loss/chexpert": 0.6, "lr": np.float32(0.5), "throughput/img_per_s": 123.5, "time/data_wait_pct": 2.0,
         "memory/rss_peak_gb": 1.25},
        {"auc/val/chexpert/teacher": 0.81, "auc/val/chexpert/student": float("nan"), "loss/chexpert": 0.5},
    ]
    with caplog.at_level(logging.WARNING):
        for step, row in enumerate(rows):
            tracker.log({**row, "note": "not a number", "missing": None}, step=10 * step)
    tracker.finish()
    tracker.finish()  # a second call is a no-op
    assert sorted(r.getMessage() for r in caplog.records if "dropping metric" in r.getMessage()) == [
        "W&B: dropping metric 'missing': NoneType is not a number",
        "W&B: dropping metric 'note': str is not a number",
    ]  # once per key, not once per step

    [run] = read_offline_runs(tmp_path)
    assert (run["id"], run["project"], run["group"], run["name"], run["tags"]) == (
        runfolder.run_id(cfg), "proj", "grp", "first", ["tiny", "cpu"])
    assert run["exit_code"] == 0
    assert [row["_step"] for row in run["history"]] == [0, 10, 20]
    for logged, row in zip(rows, run["history"]):
        got = metrics_only(row)
        assert set(got) == {*logged, "_step"}
        for key, value in logged.items():
            assert got[key] == pytest.approx(float(value), nan_ok=True)
    assert math.isnan(run["history"][2]["auc/val/chexpert/student"])

    assert run["config"] == without_secrets(to_dict(cfg))
    assert run["config"]["data"]["store"]["endpoint_url"] == "http://host:9000"
    assert run["config"]["data"]["store"]["url"] == "s3://bucket/store"
    assert run["config"]["model"]["backbone_kwargs"] == {"api_key": "<redacted>", "embed_dim": 24}
    assert run["config"]["optim"]["lr"] == cfg.optim.lr
    assert SECRET.encode() not in all_bytes(tmp_path)  # run folder, W&B's logs, and HOME's cache


@pytest.mark.parametrize("env, expected", [
    ({}, ("ark-dist", "tiny", "")),
    ({"WANDB_PROJECT": "envproj", "WANDB_NAME": "envname", "WANDB_RUN_GROUP": "envgroup"},
     ("envproj", "envname", "envgroup")),
])
def test_names_default_to_wandb_variables_then_ours(tmp_path, monkeypatch, env, expected):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    tracker = open_for(make_config(tmp_path, "tracking.wandb=offline"))
    tracker.finish()
    [run] = read_offline_runs(tmp_path)
    assert (run["project"], run["name"], run["group"]) == expected


def test_other_ranks_and_disabled_write_nothing(tmp_path):
    for rank, mode in [(1, "offline"), (3, "auto"), (0, "disabled")]:
        cfg = make_config(tmp_path, f"tracking.wandb={mode}", f"tracking.dir={tmp_path / 'wb'}")
        tracker = open_for(cfg, rank=rank)
        assert isinstance(tracker, NullTracker)
        tracker.log({"loss/chexpert": 1.0}, step=0)
        tracker.finish()
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_a_restarted_run_writes_the_same_run_id(tmp_path):
    cfg = make_config(tmp_path, "tracking.wandb=offline")
    for steps in ([0, 1, 2], [2, 3]):  # the restart resumes from the checkpoint at step 2
        tracker = open_for(cfg)
        for step in steps:
            tracker.log({"loss/chexpert": 1.0 / (step + 1)}, step=step)
        tracker.finish()
    runs = read_offline_runs(tmp_path)
    assert [run["id"] for run in runs] == [runfolder.run_id(cfg)] * 2
    assert all(run["resume"] for run in runs)  # `wandb sync` appends the second to the first
    assert [[row["_step"] for row in run["history"]] for run in runs] == [[0, 1, 2], [2, 3]]


def write_netrc(home: Path, host: str) -> None:
    (home / ".netrc").write_text(f"machine {host}\n  login user\n  password {'k' * 40}\n")


@pytest.mark.parametrize("setting, env, netrc_host, expected", [
    ("auto", {}, None, "offline"),
    ("auto", {"WANDB_API_KEY": "k" * 40}, None, "online"),
    ("auto", {"WANDB_IDENTITY_TOKEN_FILE": "/var/run/wandb-token"}, None, "online"),
    ("auto", {}, "api.wandb.ai", "online"),  # what `wandb login` writes
    ("auto", {}, "wandb.example.com", "offline"),  # a key for another server
    ("auto", {"WANDB_BASE_URL": "https://wandb.example.com"}, "wandb.example.com", "online"),
    ("auto", {"WANDB_MODE": "offline", "WANDB_API_KEY": "k" * 40}, None, "offline"),
    ("auto", {"WANDB_MODE": "dryrun"}, "api.wandb.ai", "offline"),
    ("auto", {"WANDB_MODE": "disabled"}, None, "disabled"),
    ("auto", {"WANDB_MODE": "online"}, None, "online"),
    ("offline", {"WANDB_API_KEY": "k" * 40}, "api.wandb.ai", "offline"),
    ("online", {"WANDB_MODE": "offline"}, None, "online"),
    ("disabled", {"WANDB_API_KEY": "k" * 40}, None, "disabled"),
])
def test_wandb_mode(no_wandb_credentials, monkeypatch, setting, env, netrc_host, expected):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    if netrc_host:
        write_netrc(no_wandb_credentials, netrc_host)
    assert wandb_mode(TrackingConfig(wandb=setting)) == expected


def test_wandb_mode_reads_the_server_that_wandb_login_host_saved(no_wandb_credentials):
    settings = no_wandb_credentials / ".config" / "wandb" / "settings"
    settings.parent.mkdir(parents=True)
    settings.write_text("[default]\nbase_url = https://wandb.example.com\n")
    write_netrc(no_wandb_credentials, "wandb.example.com")
    assert wandb_mode(TrackingConfig()) == "online"


def test_wandb_mode_rejects_an_unknown_wandb_mode_variable(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "sometimes")
    with pytest.raises(ValueError, match="WANDB_MODE"):
        wandb_mode(TrackingConfig())


def test_wandb_dir(monkeypatch):
    assert wandb_dir(TrackingConfig(dir="/scratch/wb"), run_dir="/runs/a") == "/scratch/wb"
    assert wandb_dir(TrackingConfig(), run_dir="/runs/a") == "/runs/a"
    monkeypatch.setenv("WANDB_DIR", "/scratch/env")
    assert wandb_dir(TrackingConfig(), run_dir="s3://bucket/runs/a") == "/scratch/env"
    monkeypatch.delenv("WANDB_DIR")
    monkeypatch.chdir("/")
    assert wandb_dir(TrackingConfig(), run_dir="s3://bucket/runs/a") == "/"


def test_without_secrets():
    data = {
        "store": {"url": "s3://AKIAEXAMPLE:xyz@bucket/p", "endpoint_url": "http://user:p@ss@host:9000/x",
                  "retries": 6, "ratio": 0.5, "on": True, "none": None},
        "urls": ["https://host/a?X-Amz-Credential=AKIA&X-Amz-Signature=abc&part=2", "gs://bucket/model@step100"],
        "AWS_SECRET_ACCESS_KEY": "s", "apiKey": "s", "Private-Key": {"pem": "s"}, "auth_token": ["s"],
        "db_password": "s", "passwd": "s", "credentials": "s",
    }
    assert without_secrets(data) == {
        "store": {"url": "s3://bucket/p", "endpoint_url": "http://host:9000/x",
                  "retries": 6, "ratio": 0.5, "on": True, "none": None},
        "urls": ["https://host/a?X-Amz-Credential=<redacted>&X-Amz-Signature=<redacted>&part=2",
                 "gs://bucket/model@step100"],
        "AWS_SECRET_ACCESS_KEY": "<redacted>", "apiKey": "<redacted>", "Private-Key": "<redacted>",
        "auth_token": "<redacted>", "db_password": "<redacted>", "passwd": "<redacted>", "credentials": "<redacted>",
    }
    assert data["store"]["url"] == "s3://AKIAEXAMPLE:xyz@bucket/p"  # a copy: the input is untouched

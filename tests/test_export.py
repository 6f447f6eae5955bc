"""Export (DESIGN 2.5) from a checkpoint that a real Ray Train + DeepSpeed run wrote (tiny Swin, CPU)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from ark_dist.config import load
from ark_dist.export import latest_checkpoint, main, outputs
from conftest import run_shards

DATASETS = ["chexpert", "shenzhen"]
TINY = {"embed_dim": 24, "depths": [1, 1], "num_heads": [1, 2], "window_size": 4, "img_size": 64}
HEAD_KEYS = {"head.weight", "head.bias", "head_dist.weight", "head_dist.bias"}  # what Ark's recipe deletes


@pytest.fixture(scope="module")
def trained(synth_root, tmp_path_factory):
    """A real run folder: one DeepSpeed worker on a local Ray cluster, one epoch of two 2-step
    rounds, a checkpoint after every step (so the run folder holds four)."""
    import ray

    from ark_dist.train.run import fit

    root = tmp_path_factory.mktemp("export")
    for source in DATASETS:
        code, _, err = run_shards("build", "--source", source, "--root", synth_root / source, "--out", root / "store",
                                  "--quiet", "--workers", "1", "--samples-per-shard", "4", "--max-side", "64")
        assert code == 0, err
    cfg = load(None, [f"data.store.url={root / 'store'}", f"data.datasets=[{', '.join(DATASETS)}]",
                      "data.num_workers=0", "data.views.image_size=64", "data.views.load_size=72",
                      "data.shuffle_buffer=16", "data.max_steps_per_round=2", f"model.backbone_kwargs={json.dumps(TINY)}",
                      "model.projector_dim=32", "engine.num_workers=1", "train.epochs=1", "train.global_batch=4",
                      "train.checkpoint_every=1", "train.keep_checkpoints=10", f"train.storage_path={root / 'runs'}",
                      "train.name=tiny", "train.max_failures=0", "optim.lr=0.05", "optim.warmup_epochs=0"])
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        result = fit(cfg)
    finally:
        if started:
            ray.shutdown()
    assert result.error is None, result.error
    return {"run": root / "runs" / "tiny", "final": Path(result.checkpoint.path)}


def _export(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _read(stem: Path):
    from safetensors import safe_open

    with safe_open(f"{stem}.safetensors", "pt") as f:
        tensors, meta = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    return tensors, meta, torch.load(f"{stem}.pth.tar", map_location="cpu", weights_only=True)


def _arkmodel(checkpoint: Path, weights: str):
    """The checkpoint's model rebuilt the way the brief states, independently of the exporter."""
    from safetensors.torch import load_file

    from ark_dist.config import Config
    from ark_dist.configtree import from_dict
    from ark_dist.model import ArkModel

    state = json.loads((checkpoint / "state.json").read_text())
    model = ArkModel(from_dict(Config, state["config"]).model, heads={n: len(v) for n, v in state["labels"].items()})
    model.load_state_dict(load_file(checkpoint / weights), strict=True)
    return model.eval(), state


def _copy(checkpoint: Path, dest: Path) -> Path:
    return Path(shutil.copytree(checkpoint, dest, ignore=shutil.ignore_patterns("engine")))


def test_out_names_both_files_from_either_name_or_a_stem(tmp_path):
    assert outputs(f"{tmp_path}/a.safetensors") == (f"{tmp_path}/a.safetensors", f"{tmp_path}/a.pth.tar")
    assert outputs(f"{tmp_path}/a.pth.tar") == (f"{tmp_path}/a.safetensors", f"{tmp_path}/a.pth.tar")
    assert outputs(f"{tmp_path}/ark.v1") == (f"{tmp_path}/ark.v1.safetensors", f"{tmp_path}/ark.v1.pth.tar")
    assert outputs("s3://b/x/t.pth.tar") == ("s3://b/x/t.safetensors", "s3://b/x/t.pth.tar")


@pytest.mark.slow
def test_the_teacher_loads_into_current_timm_with_the_ark_recipe(trained, tmp_path, capsys):
    import timm

    code, out, err = _export(capsys, "--checkpoint", trained["final"], "--out", tmp_path / "ark.pth.tar")
    assert code == 0, err
    assert out.split() == [str(tmp_path / "ark.safetensors"), str(tmp_path / "ark.pth.tar")]

    # Ark's loading recipe, verbatim but for the tiny Swin's size arguments.
    state_dict = torch.load(tmp_path / "ark.pth.tar", map_location="cpu", weights_only=True)
    for key in HEAD_KEYS & state_dict.keys():
        del state_dict[key]
    m = timm.create_model("swin_base_patch4_window7_224", num_classes=5, pretrained=False, **TINY)
    result = m.load_state_dict(state_dict, strict=False)
    classifier = {f"head.fc.{name}" for name, _ in m.get_classifier().named_parameters()}
    assert set(result.missing_keys) == classifier == {"head.fc.weight", "head.fc.bias"}
    assert result.unexpected_keys and all(k.startswith(("projector.", "omni_heads.")) for k in result.unexpected_keys)
    assert {k.split(".")[1] for k in result.unexpected_keys if k.startswith("omni_heads.")} == set(DATASETS)

    teacher, _ = _arkmodel(trained["final"], "teacher.safetensors")
    m.eval()
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        pooled = m.forward_head(m.forward_features(x), pre_logits=True)  # (3, 48)
        assert pooled.shape == (3, teacher.backbone.num_features)
        assert torch.equal(pooled, teacher.backbone(x))
        projection = torch.nn.functional.linear(pooled, state_dict["projector.weight"], state_dict["projector.bias"])
        assert torch.equal(projection, teacher(x, heads=[]).projection)


@pytest.mark.slow
def test_both_files_hold_the_same_fp32_tensors_and_the_metadata(trained, tmp_path, capsys, monkeypatch):
    from safetensors.torch import load_file

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "do-not-export-this-5f3a")
    code, _, err = _export(capsys, "--checkpoint", trained["final"], "--out", tmp_path / "ark")
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ark.pth.tar", "ark.safetensors"]  # no temporaries
    tensors, meta, flat = _read(tmp_path / "ark")
    assert tensors.keys() == flat.keys() and all(torch.equal(tensors[k], flat[k]) for k in tensors)
    teacher = load_file(trained["final"] / "teacher.safetensors")
    assert {f"backbone.{k}" if not k.startswith(("projector.", "omni_heads.")) else k for k in tensors} == teacher.keys()
    assert all(torch.equal(v, teacher[k if k.startswith(("projector.", "omni_heads.")) else f"backbone.{k}"])
               for k, v in tensors.items())
    assert all(v.dtype == torch.float32 for v in tensors.values() if v.is_floating_point())

    state = json.loads((trained["final"] / "state.json").read_text())
    assert meta["format"] == "ark-dist-export" and meta["model"] == "teacher"
    assert json.loads(meta["labels"]) == state["labels"] and json.loads(meta["datasets"]) == DATASETS
    assert json.loads(meta["cursor"]) == state["cursor"] == {"epoch": 1, "round": 0, "step": 0}
    assert meta["manifest_sha256"] == state["manifest_sha256"] and len(meta["manifest_sha256"]) == 64
    assert meta["backbone"] == "swin_base_patch4_window7_224" and json.loads(meta["backbone_kwargs"]) == TINY
    assert (meta["projector"], meta["projector_dim"]) == ("linear", "32")
    assert meta["source"] == str(trained["final"])
    for suffix in (".safetensors", ".pth.tar"):
        assert b"do-not-export-this" not in (tmp_path / f"ark{suffix}").read_bytes()


@pytest.mark.slow
def test_student_exports_the_student_cast_to_fp32(trained, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    assert _export(capsys, "--checkpoint", trained["final"], "--out", tmp_path / "teacher")[0] == 0
    assert _export(capsys, "--checkpoint", trained["final"], "--out", tmp_path / "student", "--student")[0] == 0
    teacher, _, _ = _read(tmp_path / "teacher")
    student, meta, flat = _read(tmp_path / "student")
    assert meta["model"] == "student" and student.keys() == teacher.keys() == flat.keys()
    assert any(not torch.equal(student[k], teacher[k]) for k in student), "after training they differ"
    saved = load_file(trained["final"] / "student.safetensors")
    assert all(torch.equal(v, saved[k if k.startswith(("projector.", "omni_heads.")) else f"backbone.{k}"])
               for k, v in student.items())

    # A student trained in bf16 is stored in bf16: the export is its exact fp32 upcast.
    bf16 = _copy(trained["final"], tmp_path / "bf16")
    save_file({k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in saved.items()},
              bf16 / "student.safetensors")
    assert _export(capsys, "--checkpoint", bf16, "--out", tmp_path / "bf16.safetensors", "--student")[0] == 0
    upcast, _, flat = _read(tmp_path / "bf16")
    assert all(v.dtype == torch.float32 for v in upcast.values() if v.is_floating_point())
    assert all(torch.equal(upcast[k], student[k].to(torch.bfloat16).float()) for k in upcast)
    assert all(torch.equal(upcast[k], flat[k]) for k in upcast)


@pytest.mark.slow
def test_a_run_folder_exports_its_furthest_complete_checkpoint(trained, tmp_path, capsys):
    assert latest_checkpoint(str(trained["run"])) == str(trained["final"])
    assert len(list(trained["run"].glob("checkpoint_*/state.json"))) == 4

    # Folder names (times) and cursors disagree; the furthest cursor wins, incomplete ones never do.
    run = tmp_path / "run"
    for name, cursor in (("checkpoint_2026-01-01_00-00-01.0", (1, 0, 0)), ("checkpoint_2026-01-01_00-00-02.0", (0, 2, 7)),
                         ("checkpoint_2026-01-01_00-00-03.0", (0, 9, 0)), ("checkpoint_2026-01-01_00-00-04.0", (7, 0, 0)),
                         ("checkpoint_2026-01-01_00-00-05.0", (8, 0, 0))):
        folder = _copy(trained["final"], run / name)
        state = json.loads((folder / "state.json").read_text())
        state["cursor"] = dict(zip(("epoch", "round", "step"), cursor))
        (folder / "state.json").write_text(json.dumps(state))
    (run / "checkpoint_2026-01-01_00-00-04.0" / "state.json").unlink()  # not yet written
    (run / "checkpoint_2026-01-01_00-00-05.0" / "teacher.safetensors").unlink()  # still being copied
    (run / "checkpoint_manager_snapshot.json").write_text("{}")
    code, _, err = _export(capsys, "--checkpoint", run, "--out", tmp_path / "best")
    assert code == 0, err
    _, meta, _ = _read(tmp_path / "best")
    assert meta["source"] == str(run / "checkpoint_2026-01-01_00-00-01.0")
    assert json.loads(meta["cursor"]) == {"epoch": 1, "round": 0, "step": 0}
    # --student needs student.safetensors, which the (8, 0, 0) one has: the furthest complete for that.
    assert latest_checkpoint(str(run), student=True) == str(run / "checkpoint_2026-01-01_00-00-05.0")


@pytest.mark.slow
def test_export_reads_and_writes_s3(trained, tmp_path, capsys, s3_endpoint, s3_bucket):
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    checkpoints = sorted(p for p in trained["run"].glob("checkpoint_*") if p.is_dir())
    for folder in checkpoints[-2:]:  # the final one and the one before it
        for name in ("state.json", "teacher.safetensors", "student.safetensors"):
            s3.upload_file(str(folder / name), s3_bucket, f"runs/tiny/{folder.name}/{name}")
    code, out, err = _export(capsys, "--checkpoint", f"s3://{s3_bucket}/runs/tiny",
                             "--out", f"s3://{s3_bucket}/exports/ark.safetensors")
    assert code == 0, err
    assert out.split() == [f"s3://{s3_bucket}/exports/ark.safetensors", f"s3://{s3_bucket}/exports/ark.pth.tar"]
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=s3_bucket, Prefix="exports/")["Contents"])
    assert keys == ["exports/ark.pth.tar", "exports/ark.safetensors"]
    for key in keys:
        s3.download_file(s3_bucket, key, str(tmp_path / key.split("/")[1]))
    remote, meta, flat = _read(tmp_path / "ark")
    assert meta["source"] == f"s3://{s3_bucket}/runs/tiny/{trained['final'].name}"
    assert _export(capsys, "--checkpoint", trained["final"], "--out", tmp_path / "local")[0] == 0
    local, _, _ = _read(tmp_path / "local")
    assert remote.keys() == local.keys() == flat.keys()
    assert all(torch.equal(remote[k], local[k]) and torch.equal(flat[k], local[k]) for k in local)

    missing = f"s3://{s3_bucket}/runs/nope"
    code, out, err = _export(capsys, "--checkpoint", missing, "--out", f"s3://{s3_bucket}/exports/x")
    assert (code, out, err) == (2, "", f"error: checkpoint not found: {missing}\n")
    code, out, err = _export(capsys, "--checkpoint", trained["final"], "--out", "s3://no-such-bucket-4e1/ark")
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, err
    assert err.startswith("error: cannot write s3://no-such-bucket-4e1/ark.safetensors")
    assert len(s3.list_objects_v2(Bucket=s3_bucket, Prefix="exports/")["Contents"]) == 2


def _no_state(tmp_path, final):
    folder = _copy(final, tmp_path / "ckpt")
    (folder / "state.json").unlink()
    return folder, str(folder)


def _other_model(tmp_path, final):
    folder = _copy(final, tmp_path / "ckpt")
    state = json.loads((folder / "state.json").read_text())
    state["config"]["model"]["projector_dim"] = 48
    (folder / "state.json").write_text(json.dumps(state))
    return folder, "projector.weight"


def _truncated(tmp_path, final):
    folder = _copy(final, tmp_path / "ckpt")
    data = (folder / "teacher.safetensors").read_bytes()
    (folder / "teacher.safetensors").write_bytes(data[: len(data) // 2])
    return folder, str(folder / "teacher.safetensors")


def _no_teacher(tmp_path, final):
    folder = _copy(final, tmp_path / "ckpt")
    (folder / "teacher.safetensors").unlink()
    return folder, "teacher.safetensors"


def _run_without_complete_checkpoint(tmp_path, final):
    folder = _copy(final, tmp_path / "run" / "checkpoint_2026-01-01_00-00-01.0")
    (folder / "state.json").unlink()
    return tmp_path / "run", "no complete checkpoint"


@pytest.mark.slow
@pytest.mark.parametrize("case", [_no_state, _other_model, _truncated, _no_teacher, _run_without_complete_checkpoint])
def test_a_bad_checkpoint_is_one_line_and_writes_nothing(trained, tmp_path, capsys, case):
    checkpoint, culprit = case(tmp_path, trained["final"])
    (tmp_path / "out").mkdir()
    code, out, err = _export(capsys, "--checkpoint", checkpoint, "--out", tmp_path / "out" / "ark")
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ") and str(checkpoint) in err, err
    assert culprit in err
    assert list((tmp_path / "out").iterdir()) == []


def test_a_missing_checkpoint_or_unwritable_out_is_one_line_and_writes_nothing(tmp_path, capsys):
    (tmp_path / "out").mkdir()
    code, out, err = _export(capsys, "--checkpoint", tmp_path / "nope", "--out", tmp_path / "out" / "ark")
    assert (code, out) == (2, "") and err == f"error: checkpoint not found: {tmp_path / 'nope'}\n"
    code, out, err = _export(capsys, "--checkpoint", tmp_path / "nope", "--out", tmp_path / "missing" / "ark")
    assert (code, out) == (2, "") and len(err.splitlines()) == 1 and str(tmp_path / "missing") in err
    assert list((tmp_path / "out").iterdir()) == [] and not (tmp_path / "missing").exists()


def test_a_release_folder_loads_in_timm_alone_and_its_card_carries_the_runs_numbers(trained, tmp_path, capsys):
    """`launch.py release`: timm's `local-dir:` loader builds the backbone from the folder, in a
    process that never imports ark_dist, to the features of the checkpoint's teacher; the heads
    file names its classes; the model card's AUC table is the run's last evaluation."""
    import subprocess
    import sys

    from safetensors import safe_open

    from ark_dist.export import load_checkpoint
    from ark_dist.release import main as release_main

    out = tmp_path / "ark-tiny"
    assert release_main(["--checkpoint", str(trained["run"]), "--out", str(out)]) == 0, capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "ark-tiny.pth.tar", "ark_heads.safetensors",
                                                    "config.json", "model.safetensors"]
    torch.manual_seed(0)
    images = torch.randn(2, 3, 64, 64)
    torch.save(images, tmp_path / "images.pt")
    script = ("import sys, timm, torch\n"
              f"model = timm.create_model('local-dir:{out}', pretrained=True).eval()\n"
              "assert 'ark_dist' not in sys.modules and model.num_classes == 0\n"
              f"torch.save(model(torch.load('{tmp_path / 'images.pt'}')).detach(), '{tmp_path / 'timm.pt'}')\n"
              "print(model.pretrained_cfg['input_size'], model.pretrained_cfg['crop_pct'])\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={k: v for k, v in __import__("os").environ.items() if k != "PYTHONPATH"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "[3, 64, 64] 0.875" in done.stdout
    teacher, state = load_checkpoint(str(trained["final"]))
    with torch.no_grad():
        expected = teacher.backbone(images)
    torch.testing.assert_close(torch.load(tmp_path / "timm.pt"), expected, rtol=0, atol=1e-6)
    config = json.loads((out / "config.json").read_text())
    assert config["ark_dist"]["labels"] == state["labels"] and config["num_features"] == expected.shape[1]
    with safe_open(str(out / "ark_heads.safetensors"), "pt") as f:
        assert json.loads(f.metadata()["labels"]) == state["labels"]
        assert {k.split(".")[1] for k in f.keys() if k.startswith("omni_heads.")} == set(DATASETS)
    # The card's evaluation table: the run's last evaluation, as metrics.jsonl holds it.
    rows = [json.loads(line) for line in (trained["final"] / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in rows if any(k.startswith("auc/") for k in r)][-1]
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlicense: other\nlibrary_name: timm\n")
    names = {"chexpert": "CheXpert", "shenzhen": "Shenzhen", "mean": "mean"}
    for name, shown in names.items():
        line = next(line for line in card.splitlines() if line.startswith(f"| {shown} |") and line.count("|") == 6)
        cells = [c.strip() for c in line.split("|")[2:-1]]
        values = [last.get(f"auc/{split}/{name}/{model}") for model in ("teacher", "student") for split in ("val", "test")]
        assert cells == ["–" if v is None or v != v else f"{v:.4f}" for v in values], line
    assert "not a medical device" in card and 'timm.create_model("local-dir:' in card


def test_a_release_of_a_missing_run_is_one_line_and_writes_nothing(tmp_path, capsys):
    from ark_dist.release import main as release_main

    assert release_main(["--checkpoint", str(tmp_path / "nope"), "--out", str(tmp_path / "model")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and str(tmp_path / "nope") in err
    assert not (tmp_path / "model").exists() and list(tmp_path.iterdir()) == []


def test_the_legacy_layout_is_timm_0_5_4s_and_timms_converter_turns_it_back(trained, tmp_path, capsys):
    """`export --layout legacy`: the keys of the official Swin release (patch merging one stage
    back, the blocks' buffers) and heads numbered in the recipe's order; timm's own
    checkpoint_filter_fn gives back today's export tensor for tensor; reuse loads it as the same model."""
    from safetensors.torch import load_file
    from timm.models.swin_transformer import checkpoint_filter_fn

    from ark_dist.export import load_checkpoint
    from ark_dist.reuse.init import load_model
    from test_weights import official_release

    assert _export(capsys, "--checkpoint", trained["final"], "--out", tmp_path / "now")[0] == 0
    assert _export(capsys, "--checkpoint", trained["final"], "--out", tmp_path / "old", "--layout", "legacy")[0] == 0
    current, legacy = load_file(tmp_path / "now.safetensors"), load_file(tmp_path / "old.safetensors")
    assert torch.load(tmp_path / "old.pth.tar", weights_only=True).keys() == legacy.keys()
    teacher, state = load_checkpoint(str(trained["final"]))
    # The official release's keys, written from its description (tests/test_weights.py), less its classifier.
    official = {k for k in official_release(teacher.backbone, swin=TINY) if not k.startswith("head.")}
    assert {k for k in legacy if not k.startswith(("projector.", "omni_heads."))} == official
    assert {k.rsplit(".", 1)[0] for k in legacy if k.startswith("omni_heads.")} == {
        f"omni_heads.{i}" for i in range(len(DATASETS))}
    back = checkpoint_filter_fn({k: v for k, v in legacy.items() if not k.startswith(("projector.", "omni_heads."))},
                                teacher.backbone)
    heads = {f"omni_heads.{DATASETS[int(k.split('.')[1])]}.{k.split('.', 2)[2]}": v
             for k, v in legacy.items() if k.startswith("omni_heads.")}
    rebuilt = {**back, **heads, **{k: v for k, v in legacy.items() if k.startswith("projector.")}}
    assert rebuilt.keys() == current.keys() and all(torch.equal(rebuilt[k], current[k]) for k in current)
    a, _ = load_model(str(tmp_path / "now.safetensors"), log=lambda *_: None)
    b, labels = load_model(str(tmp_path / "old.safetensors"), log=lambda *_: None)
    assert labels == state["labels"]
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        x, y = a(images), b(images)
    assert all(torch.equal(x.logits[d], y.logits[d]) for d in DATASETS)

"""Ark on a real local Ray cluster with real DeepSpeed engines (gloo, CPU) and a tiny Swin."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from ark_dist.config import load
from ark_dist.train.schedule import lr_at
from conftest import read_store_samples, run_shards

DATASETS = ["chexpert", "rsna_pneumonia", "shenzhen"]
ALL = ["mimic_cxr", "chexpert", "chestxray14", "rsna_pneumonia", "vindr_cxr", "shenzhen"]
EPOCHS = 4
SIX = [f"data.datasets=[{', '.join(ALL)}]", f"train.epochs={EPOCHS}", "train.eval_every=2"]
SECRET = "hunter2-not-for-logs"
TINY = "{embed_dim: 24, depths: [1, 1], num_heads: [1, 2], window_size: 4, img_size: 64}"


@pytest.fixture(scope="module")
def tiny_store(synth_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("trainstore")
    for source in ALL:
        code, _, err = run_shards("build", "--source", source, "--root", synth_root / source, "--out", out, "--quiet",
                                  "--workers", "1", "--samples-per-shard", "4", "--max-side", "64")
        assert code == 0, err
    return out


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def tiny_config(store, runs, name, *extra):
    return load(None, [f"data.store.url={store}", f"data.datasets=[{', '.join(DATASETS)}]", "data.num_workers=0",
                       "data.views.image_size=64", "data.views.load_size=72", "data.shuffle_buffer=16",
                       f"model.backbone_kwargs={TINY}", "model.projector_dim=32", "train.epochs=2",
                       "train.global_batch=4", "train.eval_every=1", f"train.storage_path={runs}", f"train.name={name}",
                       "optim.lr=0.05", "optim.warmup_epochs=0.5", *extra])


def test_lr_schedule_matches_its_formula():
    assert lr_at(0, total=100, warmup=10, lr=0.3, min_lr=1e-5) == pytest.approx(0.03)
    assert lr_at(9, total=100, warmup=10, lr=0.3, min_lr=1e-5) == pytest.approx(0.3)
    for step in (10, 55, 99):
        expected = 1e-5 + (0.3 - 1e-5) * 0.5 * (1 + math.cos(math.pi * (step - 10) / 90))
        assert lr_at(step, total=100, warmup=10, lr=0.3, min_lr=1e-5) == pytest.approx(expected)


def _history(result) -> list[dict]:
    """Every round's metrics, as carried by the run's final checkpoint."""
    text = (Path(result.checkpoint.path) / "metrics.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines()]


@pytest.fixture(scope="module")
def six_datasets(tiny_store, tmp_path_factory, ray_cluster):
    """A 2-worker run over all six datasets (ZeRO 0, fp32): the reference other runs compare to."""
    from ark_dist.train.run import fit

    # A credential in a URL the run never needs (the store is local): it must reach no log.
    result = fit(tiny_config(tiny_store, tmp_path_factory.mktemp("runs"), "six", *SIX, "tracking.wandb=offline",
                             f"data.store.endpoint_url=http://ark:{SECRET}@127.0.0.1:9"))
    assert result.error is None, result.error
    return result


# The headline AUC's classes (DESIGN 3): CheXpert's 5 competition classes, every class elsewhere.
HEADLINE = {"chexpert": ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"]}


def _evaluated_outcomes(facts: dict, labels: list[str], task: str, policy) -> dict[str, int]:
    """{class: 0 or 1} for the labels of one sample that evaluation keeps (a masked one is absent),
    written from the policy's definition (DESIGN 2.2) rather than through LabelPolicy: evaluation
    counts a target >= 0.5 as positive, so an LSR target U(a, b) with a >= 0.5 is a positive."""
    kept = {}
    for name in labels:
        if facts.get("readers"):
            votes = [reader[name] for reader in facts["readers"].values()]
            kept[name] = int(any(votes)) if policy.readers == "any" else int(2 * sum(votes) > len(votes))
            continue
        value = facts["labels"].get(name)
        if value == 1:
            kept[name] = 1
        elif value == 0 or (value is None and policy.blank == "zero"):
            kept[name] = 0
        elif value == -1 and policy.uncertain != "masked":
            assert policy.uncertain != "lsr" or policy.lsr_range[0] >= 0.5, "an LSR range across 0.5"
            kept[name] = int(policy.uncertain in ("ones", "lsr"))
    if task == "multiclass" and (len(kept) < len(labels) or sum(kept.values()) != 1):
        return {}  # no single known class: the sample's mask is all zeros
    return kept


def _expected_auc_defined(store: Path, config, name: str) -> dict[str, tuple[bool, bool]]:
    """{split: (headline AUC defined, all-class AUC defined)}: an AUC is defined when at least one
    of its classes has both outcomes among the split's evaluated labels."""
    entry = json.loads((store / "manifest.json").read_text())["datasets"][name]
    seen = {}  # (split, class) -> outcomes
    for facts in read_store_samples(store, name).values():
        for label, outcome in _evaluated_outcomes(facts, entry["labels"], entry["task"],
                                                  config.data.policy(name)).items():
            seen.setdefault((facts["_split"], label), set()).add(outcome)

    def defined(split: str, classes: list[str]) -> bool:
        return any(seen.get((split, c)) == {0, 1} for c in classes)

    return {split: (defined(split, HEADLINE.get(name, entry["labels"])), defined(split, entry["labels"]))
            for split, info in entry["splits"].items() if split in ("val", "test") and info["num_samples"]}


@pytest.mark.slow
def test_two_workers_train_all_six_datasets_evaluate_and_checkpoint(six_datasets, tiny_store):
    from ark_dist.config import Config
    from ark_dist.configtree import from_dict

    metrics, history = six_datasets.metrics, _history(six_datasets)
    assert len(history) == EPOCHS * len(ALL) and all(row["teacher/ranks_identical"] == 1.0 for row in history)
    assert metrics["epoch"] == EPOCHS - 1 and metrics["round"] == len(ALL) - 1
    # No learning is asserted here (the labels show nowhere in the pixels). What the data decide: an
    # AUC is NaN exactly when none of its classes has both outcomes in the split, else in [0, 1].
    config = from_dict(Config, json.loads((Path(six_datasets.checkpoint.path) / "state.json").read_text())["config"])
    evaluations = [row for row in history if any(k.startswith("auc/") for k in row)]
    assert evaluations and evaluations[-1] is history[-1]  # the final evaluation is among them
    outcomes = set()
    for name in ALL:
        for split, (headline, every) in _expected_auc_defined(tiny_store, config, name).items():
            outcomes.add(headline)
            for row in evaluations:
                for model in ("student", "teacher"):
                    auc = row[f"auc/{split}/{name}/{model}"]
                    assert (0.0 <= auc <= 1.0) if headline else math.isnan(auc), (split, name, model, auc)
                    if name in HEADLINE:  # the headline is a subset: the all-class mean is logged too
                        auc = row[f"auc_all/{split}/{name}/{model}"]
                        assert (0.0 <= auc <= 1.0) if every else math.isnan(auc), (split, name, model, auc)
    assert outcomes == {True, False}  # this store has splits of both kinds, so both branches are checked
    assert metrics["lr"] == pytest.approx(1e-5)
    # Ark's reference: after pass d of epoch e, the teacher moves with m(e·D + d); m rises from
    # 0.9 on a cosine over R = epochs x datasets rounds and never reaches 1 (that update would be a no-op).
    total = EPOCHS * len(ALL)
    assert [row["ema/r"] for row in history] == list(range(total))
    for row in history:
        r = row["epoch"] * len(ALL) + row["round"]
        assert row["ema/momentum"] == pytest.approx(1 - 0.1 * (1 + math.cos(math.pi * r / total)) / 2)
        assert row["consistency/coef"] == pytest.approx(0.5 - 0.25 * (1 + math.cos(math.pi * r / total)))
    assert history[0]["ema/momentum"] == pytest.approx(0.9) and history[-1]["ema/momentum"] < 1.0
    # The synthetic labels carry no signal in the pixels, so the loss need not fall here (that is
    # test_a_visible_finding_is_learned's job); it must stay a number.
    assert all(math.isfinite(row[f"loss/task/{row_name(row)}"]) for row in history)
    rounds = [(row["epoch"], row["round"]) for row in history]
    assert rounds == [(e, r) for e in range(EPOCHS) for r in range(len(ALL))]
    folder = Path(six_datasets.checkpoint.path)
    state = json.loads((folder / "state.json").read_text())
    assert state["cursor"] == {"epoch": EPOCHS, "round": 0, "step": 0}
    assert list(state["labels"]) == ALL and len(state["manifest_sha256"]) == 64
    assert (folder / "teacher.safetensors").is_file() and (folder / "student.safetensors").is_file()
    assert (folder / "engine").is_dir() and state["config"]["data"]["datasets"] == ALL


@pytest.mark.slow
def test_the_final_evaluation_breaks_the_auc_down_by_sex_age_and_view(six_datasets, tiny_store):
    """Every evaluation logs each group's headline AUC and the gaps; the final one also writes the
    teacher's per-class table with intervals (subgroups.json/.md): its groups hold exactly the test
    samples each class evaluates, counted here from the store's own facts."""
    from ark_dist.config import Config
    from ark_dist.configtree import from_dict

    last, run = _history(six_datasets)[-1], Path(six_datasets.path)
    config = from_dict(Config, json.loads((Path(six_datasets.checkpoint.path) / "state.json").read_text())["config"])
    tables = json.loads((run / "subgroups.json").read_text())
    assert "chestxray14" in tables and "rsna_pneumonia" not in tables  # rsna's samples carry no sex, age or view
    assert not any(k.startswith("auc_group/test/rsna_pneumonia/") for k in last)
    entry = json.loads((tiny_store / "manifest.json").read_text())["datasets"]["chestxray14"]
    test = [f for f in read_store_samples(tiny_store, "chestxray14").values() if f["_split"] == "test"]
    for name in entry["labels"]:
        kept = [f for f in test if name in _evaluated_outcomes(f, entry["labels"], entry["task"],
                                                                config.data.policy("chestxray14"))]
        rows = [r for r in tables["chestxray14"] if r["class"] == name and r["attribute"] == "sex" and r["group"] != "gap"]
        expected = {}
        for f in kept:
            expected[f.get("sex") or "unknown"] = expected.get(f.get("sex") or "unknown", 0) + 1
        assert {r["group"]: r["n"] for r in rows} == expected, name
    sexes = {k: v for k, v in last.items() if k.startswith("auc_group/test/chestxray14/teacher/sex=")
             and not k.endswith("=unknown")}
    assert sexes and all(0.0 <= v <= 1.0 for v in sexes.values())
    if len(sexes) >= 2:
        assert last["auc_gap/test/chestxray14/teacher/sex"] == pytest.approx(max(sexes.values()) - min(sexes.values()))
    assert "## chestxray14: teacher, test split, final evaluation" in (run / "subgroups.md").read_text()


@pytest.mark.slow
def test_the_run_folder_holds_metrics_config_and_one_wandb_run_from_rank_0(six_datasets, tmp_path):
    from ark_dist.report import main as report
    from ark_dist.report import read_metrics, write_report
    from wandbfiles import read_offline_runs

    run = Path(six_datasets.path)
    history = _history(six_datasets)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows == history  # the run folder's file and the final checkpoint's agree, round for round
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["data"]["datasets"] == ALL and config["train"]["name"] == "six"
    # W&B: one offline run (rank 0 only; rank 1 logged nothing), one history row per round.
    runs = read_offline_runs(run)
    assert len(runs) == 1, [r["id"] for r in runs]
    logged = runs[0]["history"]
    assert [r["_step"] for r in logged] == [r["step"] for r in rows]
    for name in ALL:
        assert {f"loss/{name}", f"loss/task/{name}", f"data/skipped/{name}"} <= logged[ALL.index(name)].keys()
        assert logged[-1][f"auc/test/{name}/teacher"] == pytest.approx(rows[-1][f"auc/test/{name}/teacher"],
                                                                       nan_ok=True)
    for key in ("lr", "ema/momentum", "consistency/coef", "throughput/img_per_s", "time/data_wait_pct",
                "memory/rss_peak_gb", "auc/val/mean/teacher"):
        assert logged[-1][key] == pytest.approx(rows[-1][key]), key
    assert runs[0]["config"]["data"]["datasets"] == ALL
    # No credential anywhere in what the run wrote besides its own checkpoints.
    for path in [run / "config.yaml", *(p for p in (run / "wandb").rglob("*") if p.is_file())]:
        assert SECRET.encode() not in path.read_bytes(), path
    # `report` draws the file's numbers.
    assert report([str(run), "--out", str(tmp_path / "report")]) == 0
    series, _ = write_report(read_metrics(str(run)), tmp_path / "again", run=str(run))
    drawn = series["auc.png"]["auc/test/chexpert/teacher"]
    expected = [(r["epochs_done"], r["auc/test/chexpert/teacher"]) for r in rows if "auc/test/chexpert/teacher" in r]
    xs, ys = drawn
    assert list(xs) == [x for x, _ in expected] and list(ys) == pytest.approx([y for _, y in expected])
    assert (tmp_path / "report" / "auc.png").stat().st_size > 0


def row_name(row: dict) -> str:
    return ALL[row["round"]]


@pytest.mark.slow
@pytest.mark.parametrize("decode", ["loader", "device"])
def test_a_visible_finding_is_learned(signal_store, tmp_path, ray_cluster, decode):
    """Ark's recipe (SGD, Ark's views, EMA teacher) on 2 ranks learns a finding it can see: the
    task loss falls and held-out AUC of student and teacher is near 1 (chance is 0.5). With
    `data.decode: device` the JPEG bytes cross from a loader process to the rank, which decodes them."""
    from ark_dist.train.run import fit

    workers = "data.num_workers=1" if decode == "device" else "data.num_workers=0"
    result = fit(tiny_config(signal_store, tmp_path / "runs", "signal", "data.datasets=[shenzhen]", "train.epochs=6",
                             "train.eval_every=6", "train.global_batch=8", f"data.decode={decode}", workers))
    assert result.error is None, result.error
    losses = [row["loss/task/shenzhen"] for row in _history(result)]
    assert losses[-1] < 0.5 * losses[0], losses
    for model in ("student", "teacher"):
        for split in ("val", "test"):
            assert result.metrics[f"auc/{split}/shenzhen/{model}"] >= 0.95, (split, model, result.metrics)


@pytest.mark.slow
def test_zero3_gathers_the_teacher_update_like_zero0(tiny_store, tmp_path, ray_cluster):
    """ZeRO-3 shards the student, so the EMA must read gathered parameters; ZeRO-0 keeps them
    whole. Same seed and data: the teachers agree to float tolerance, and each is bitwise equal
    across ranks after every update. Activation checkpointing under ZeRO-3 (the recomputed forward
    gathers the shards again) changes nothing either."""
    from safetensors.torch import load_file

    from ark_dist.train.run import fit

    teachers = {}
    for stage, extra in ((0, []), (3, []), ("3-checkpointed", ["model.grad_checkpointing=true"])):
        result = fit(tiny_config(tiny_store, tmp_path / "runs", f"zero{stage}",
                                 f"engine.zero_stage={str(stage)[0]}", *extra))
        assert result.error is None, result.error
        assert all(row["teacher/ranks_identical"] == 1.0 for row in _history(result))
        teachers[stage] = load_file(Path(result.checkpoint.path) / "teacher.safetensors")
        student = load_file(Path(result.checkpoint.path) / "student.safetensors")
        moved = max((teachers[stage][k] - student[k]).abs().max().item() for k in student)
        assert moved > 1e-3, "the student's gathered weights were saved (not the teacher again)"
    for other in (3, "3-checkpointed"):
        assert teachers[0].keys() == teachers[other].keys()
        worst = max((teachers[0][k] - teachers[other][k]).abs().max().item() for k in teachers[0])
        assert worst < 1e-4, f"the ZeRO-{other} teacher differs from the ZeRO-0 one by {worst}"


@pytest.mark.slow
def test_interleaved_schedule_on_zero2(tiny_store, tmp_path, ray_cluster):
    """All datasets mixed in every batch, every head computed and masked per sample (ranks draw
    different datasets in one step: ZeRO-2 would hang or fail without the masking); EMA per step."""
    from ark_dist.train.run import fit

    result = fit(tiny_config(tiny_store, tmp_path / "runs", "mixed", "method.schedule=interleaved",
                             "method.ema=step", "engine.zero_stage=2", "train.epochs=2"))
    assert result.error is None, result.error
    history = _history(result)
    assert [(row["epoch"], row["round"]) for row in history] == [(0, 0), (1, 0)]
    assert all(row["teacher/ranks_identical"] == 1.0 for row in history)
    assert all(f"auc/test/{name}/teacher" in result.metrics for name in DATASETS)
    assert "loss/interleaved" in result.metrics
    # Per-step EMA: the update after optimizer step s (0-based over the run) uses m(s) of S steps.
    total = history[-1]["optim/steps"]
    for row in history:
        last = row["optim/steps"] - 1
        assert row["ema/r"] == last
        assert row["ema/momentum"] == pytest.approx(1 - 0.1 * (1 + math.cos(math.pi * last / total)) / 2)


def test_dry_run_and_bad_config_are_one_line(tiny_store, capsys):
    from ark_dist.train.cli import main

    args = [f"data.store.url={tiny_store}", f"data.datasets=[{', '.join(DATASETS)}]", f"model.backbone_kwargs={TINY}",
            "data.views.image_size=64", "data.views.load_size=72", "train.global_batch=4"]
    assert main(["--dry-run", *args]) == 0
    out = capsys.readouterr().out
    assert "one batch of 2 from chexpert (2, 3, 64, 64): loss" in out
    # As training batches: rank 0's share of the global batch, split into grad_accum micro-batches.
    assert main(["--dry-run", *args, "train.global_batch=8", "engine.grad_accum=2"]) == 0
    assert "one batch of 4 from chexpert in 2 micro-batches (2, 3, 64, 64): loss" in capsys.readouterr().out
    assert main(["--dry-run", *args, "optim.lrr=0.1"]) == 2
    assert "config key 'optim.lrr': unknown key" in capsys.readouterr().err
    assert main(["--dry-run", *args, "data.datasets=[chexpert, padchest]"]) == 2
    assert "'padchest' is in the recipe but not in the manifest" in capsys.readouterr().err


@pytest.mark.slow
def test_gradient_accumulation_equals_the_whole_batch(tiny_store, tmp_path, ray_cluster):
    """grad_accum=2 on 2 ranks is the grad_accum=1 run of the same global batch: the same optimizer
    steps, the same LR at every step (one step per round here), the same teacher to fp32 tolerance.
    No stochastic depth, so the two runs draw nothing differently."""
    from safetensors.torch import load_file

    from ark_dist.train.run import fit

    tiny = TINY.replace("}", ", drop_path_rate: 0.0}")
    runs = {}
    for k in (1, 2):
        # The k=2 run also checkpoints only every 4th round (and at the end): 2 of its 6 rounds.
        result = fit(tiny_config(tiny_store, tmp_path / "runs", f"accum{k}", f"engine.grad_accum={k}",
                                 f"model.backbone_kwargs={tiny}", "train.global_batch=8", "train.eval_every=2",
                                 "train.keep_checkpoints=10", f"train.checkpoint_rounds={1 if k == 1 else 4}"))
        assert result.error is None, result.error
        runs[k] = (_history(result), load_file(Path(result.checkpoint.path) / "teacher.safetensors"))
        checkpoints = sorted(p for p in Path(result.path).glob("checkpoint_*") if p.is_dir())
        assert len(checkpoints) == (6 if k == 1 else 2), checkpoints
    (one, teacher1), (two, teacher2) = runs[1], runs[2]
    assert len(one) == len(two) == 6  # every round is in the history, checkpointed or not
    assert [row["optim/steps"] for row in two] == [row["optim/steps"] for row in one]
    assert one[-1]["optim/steps"] == sum(max(1, n // 8) for n in _train_sizes(tiny_store)) * 2
    assert [row["lr"] for row in two] == pytest.approx([row["lr"] for row in one], rel=1e-9)
    assert [row[f"loss/{DATASETS[row['round']]}"] for row in two] == pytest.approx(
        [row[f"loss/{DATASETS[row['round']]}"] for row in one], rel=1e-4)
    worst = max((teacher1[k] - teacher2[k]).abs().max().item() for k in teacher1)
    assert worst < 1e-5, f"grad_accum=2's teacher differs from grad_accum=1's by {worst}"


def _train_sizes(store) -> list[int]:
    manifest = json.loads((Path(store) / "manifest.json").read_text())["datasets"]
    return [manifest[name]["splits"]["train"]["num_samples"] for name in DATASETS]


def test_a_disk_error_that_names_no_file_names_the_run_folder():
    """Ray's checkpoint upload reports a full disk without a path: the error line adds the run folder."""
    from ark_dist.train.cli import failure

    full = OSError("[Errno 28] Error writing bytes to file. Detail: [errno 28] No space left on device")
    assert failure(full, run_folder="/runs/ark") == (
        "OSError: [Errno 28] Error writing bytes to file. Detail: [errno 28] No space left on device "
        "(writing the run folder /runs/ark)")
    named = OSError("[Errno 30] Read-only file system: '/runs/ark/metrics.jsonl'")
    assert failure(named, run_folder="/runs/ark") == "OSError: [Errno 30] Read-only file system: '/runs/ark/metrics.jsonl'"
    assert failure(ValueError("bad"), run_folder="/runs/ark") == "ValueError: bad"

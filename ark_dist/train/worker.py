"""The per-worker training function that Ray Train runs on every rank (cyclic or interleaved).

Every rank executes the same sequence of collectives: same rounds, same number of steps
(from the manifest), same checkpoints and evaluations.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path

import torch

from ark_dist.config import Config, to_dict
from ark_dist.configtree import from_dict
from ark_dist.data import Cursor, DataMeter, RunLoader, Store, dataset_entry, read_manifest
from ark_dist.data.stream import subset_entries
from ark_dist.method import ArkSchedule, make_teacher
from ark_dist.model import ArkModel, load_pretrained
from ark_dist.track.runfolder import memory_metrics, run_id, run_url, write_config, write_metrics
from ark_dist.train import engine as engines
from ark_dist.train import safeload
from ark_dist.train.evaluate import evaluate, metric_classes
from ark_dist.train.resume import recorded_checkpoint
from ark_dist.train.schedule import steps_per_round
from ark_dist.train.step import ark_loss, micro_batches

# Ray Train's print patch would show a worker's print() twice on the driver; a logger shows it once
# (and lands in Ray Train's per-worker log files).
LOG = logging.getLogger("ark_dist")
LOG.setLevel(logging.INFO)
TEACHER = "teacher.safetensors"
STUDENT = "student.safetensors"
STATE = "state.json"
HISTORY = "metrics.jsonl"  # every round's metrics so far: a checkpoint carries the run's whole story
SUBGROUPS = "subgroups"  # .json and .md: the final evaluation's per-class AUCs by sex, age and view, with intervals


def teacher_digest(teacher: torch.nn.Module) -> str:
    """sha256 over the teacher's tensors: equal on every rank, bit for bit, or a bug."""
    digest = hashlib.sha256()
    for name, tensor in teacher.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def write_state(folder: str, state: dict, history: list[dict]) -> None:
    """A checkpoint's state.json and metrics.jsonl (rank 0, into the folder it reports)."""
    Path(folder, STATE).write_text(json.dumps(state, indent=1))
    Path(folder, HISTORY).write_text("".join(json.dumps(row) + "\n" for row in history))


@contextlib.contextmanager
def restored(engine, cfg: Config):
    """The latest checkpoint of the run (Ray Train's, else ark-dist's record where the driver found
    Ray's list cut off: resume.py) with its engine state loaded into `engine`: yields (folder,
    state, history, checkpoint path), or None when the run has no checkpoint."""
    import ray.train

    checkpoint = ray.train.get_checkpoint() or recorded_checkpoint(run_url(cfg))
    if checkpoint is None:
        yield None
        return
    with checkpoint.as_directory() as folder:
        safeload.guard(engine)  # tensors and plain data only: a tampered checkpoint cannot run code
        loaded, _ = engine.load_checkpoint(folder, tag="engine")
        if loaded is None:  # DeepSpeed only warns when it finds nothing to load
            raise RuntimeError(f"checkpoint {checkpoint.path} holds no engine state")
        history = Path(folder, HISTORY)
        yield (folder, json.loads(Path(folder, STATE).read_text()),
               [json.loads(line) for line in history.read_text().splitlines()] if history.is_file() else [],
               checkpoint.path)


def tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A module's state as contiguous CPU tensors (what safetensors stores)."""
    return {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}


def placement(cfg: Config) -> tuple[int, int, torch.device, torch.dtype]:
    """(rank, world size, device, compute dtype) of this Ray Train worker."""
    import ray.train

    ctx = ray.train.get_context()
    device = torch.device("cuda", torch.cuda.current_device()) if cfg.engine.use_gpu else torch.device("cpu")
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.engine.precision]
    return ctx.get_world_rank(), ctx.get_world_size(), device, dtype


def store_manifest(cfg: Config) -> tuple[str, dict]:
    """(sha256 of the store's manifest.json, its datasets), read once: the hash goes in every
    checkpoint, the datasets give sizes and label spaces."""
    store = Store(cfg.data.store)
    raw = store.read_bytes("manifest.json")
    return hashlib.sha256(raw).hexdigest(), read_manifest(store, raw=raw)


class Run:
    """One rank's view of the run: model, teacher, engine, data and the cursor."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.rank, self.world, self.device, self.dtype = placement(cfg)
        self.manifest_sha256, manifest = store_manifest(cfg)
        self.entries = subset_entries([dataset_entry(manifest, n) for n in cfg.data.datasets], cfg.data)
        torch.manual_seed(cfg.train.seed)  # identical initial student (and so teacher) on every rank
        model = self.build_model()
        self.teacher = make_teacher(model).to(self.device)  # before the engine wraps the student
        self.plan_rounds()
        # The loader yields one optimizer step's share of a rank (global / world); the step splits
        # it into grad_accum micro-batches, so the data, and hence the run, are the same for any k.
        self.micro = cfg.train.global_batch // (self.world * cfg.engine.grad_accum)
        self.engine = engines.build(model.to(self.device), cfg, micro_batch=self.micro, **self.optimizer_plan(model))
        if cfg.engine.compile:
            engines.compile_models(self.engine, self.teacher)
        self.cursor = Cursor()
        self.meter = DataMeter()
        self.history: list[dict] = []
        self.last_step_end: float | None = None  # when the previous optimizer step ended (round boundaries)
        self.last_save_s: float | None = None  # how long the previous round-end checkpoint took

    def build_model(self) -> torch.nn.Module:
        """The student as built on every rank (same seed), pretrained weights loaded; sets the
        label spaces saved with every checkpoint."""
        cfg = self.cfg
        for entry in self.entries:
            metric_classes(entry, cfg.data)  # a misnamed headline class fails here, not at the first evaluation
        self.labels = {e["name"]: list(e["labels"]) for e in self.entries}  # head order
        model = ArkModel(cfg.model, heads={e["name"]: len(e["labels"]) for e in self.entries})
        if cfg.model.pretrained:
            load_pretrained(model, cfg.model.pretrained, log=self.log)
        return model

    def plan_rounds(self) -> None:
        """Rounds of an epoch and their steps: one round per dataset (cyclic, Ark), or one round of
        all datasets mixed, as long as the cyclic rounds together (interleaved)."""
        cfg = self.cfg
        self.interleaved = cfg.method.schedule == "interleaved"
        steps = steps_per_round(self.entries, global_batch=cfg.train.global_batch, max_steps=cfg.data.max_steps_per_round)
        self.steps = [sum(steps)] if self.interleaved else steps
        self.schedule = ArkSchedule(config=cfg.method, steps=tuple(self.steps), epochs=cfg.train.epochs)

    def optimizer_plan(self, model: torch.nn.Module) -> dict:
        """`engines.build`'s LR arguments: Ark's warmup and cosine over the run's optimizer steps."""
        return {"total_steps": self.schedule.total_steps,
                "warmup_steps": int(self.cfg.optim.warmup_epochs * sum(self.steps))}

    def log(self, line: str) -> None:
        if self.rank == 0:
            LOG.info("[ark-dist] %s", line)

    # -- checkpoints ---------------------------------------------------------------------------
    def save(self, cursor: Cursor, metrics: dict) -> None:
        """Every rank saves its engine shard and reports; rank 0 adds the teacher, the student's
        whole weights (for export), the cursor, the label spaces and the resolved config."""
        import ray.train
        from safetensors.torch import save_file

        with tempfile.TemporaryDirectory() as folder:
            self.engine.save_checkpoint(folder, tag="engine")
            with engines.gathered_parameters(self.engine):  # every rank enters; rank 0 writes
                if self.rank == 0:
                    save_file(tensors(self.engine.module), f"{folder}/{STUDENT}")
            if self.rank == 0:
                save_file(tensors(self.teacher), f"{folder}/{TEACHER}")
                state = {"cursor": cursor.__dict__, "labels": self.labels, "manifest_sha256": self.manifest_sha256,
                         "config": to_dict(self.cfg), **self.extra_state()}
                write_state(folder, state, self.history)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))

    def extra_state(self) -> dict:
        """What a method adds to every checkpoint's state.json (Foundation X: its box and mask classes)."""
        return {}

    def restore(self) -> None:
        from safetensors.torch import load_file

        with restored(self.engine, self.cfg) as found:
            if found is None:
                return
            folder, state, self.history, path = found
            if state.get("labels", self.labels) != self.labels:
                raise ValueError(f"checkpoint {path}: its label spaces differ from the manifest's "
                                 f"(checkpoint {state['labels']}, manifest {self.labels}); start a new run name")
            for key, ours in self.extra_state().items():  # Foundation X: its box and mask classes
                if state.get(key, ours) != ours:
                    raise ValueError(f"checkpoint {path}: its {key} classes differ from the manifest's (checkpoint "
                                     f"{state[key]}, manifest {ours}); start a new run name")
            self.teacher.load_state_dict(load_file(f"{folder}/{TEACHER}"))
            self.cursor = Cursor(**state["cursor"])
        self.log(f"resumed at epoch {self.cursor.epoch}, round {self.cursor.round}, step {self.cursor.step}")

    # -- training ------------------------------------------------------------------------------
    def update_teacher(self, m: float) -> None:
        """EMA from the optimizer's fp32 weights (not the bf16/fp16 module copy), on every rank."""
        engines.update_teacher(self.engine, self.teacher, m)

    def round_heads(self, index: int) -> list[tuple[str, str]]:
        """(dataset, task) of the heads a round trains: one per cyclic round, all when interleaved."""
        entries = self.entries if self.interleaved else [self.entries[index]]
        return [(e["name"], e["task"]) for e in entries]

    def loader(self) -> RunLoader:
        """One loader for the rest of the run, from the cursor on: its processes start once and
        prefetch the next round while this one ends (teacher update, checkpoint, evaluation)."""
        cfg = self.cfg
        return RunLoader(entries=self.entries, interleaved=self.interleaved, config=cfg.data, seed=cfg.train.seed,
                         cursor=self.cursor, rank=self.rank, world=self.world, global_batch=cfg.train.global_batch,
                         epochs=cfg.train.epochs)

    def train_round(self, loader: RunLoader, epoch: int, index: int, start: int) -> dict:
        cfg, schedule = self.cfg, self.schedule
        heads = self.round_heads(index)
        c = schedule.consistency(epoch, index)
        losses, tasks, step_s = [], [], []
        ema, clock = {}, {}  # the last teacher update of the round (its r and m); the round's timings
        for step, batch in enumerate(self.meter.wrap(loader.round(epoch, index)), start=start):
            began = time.perf_counter()
            if step == start and self.last_step_end is not None:  # since the previous round's last step
                clock["time/boundary_s"] = began - self.last_step_end
                clock["time/first_batch_s"] = self.meter.last_wait_s  # of which: waiting for the loader
            global_step = schedule.first_step(epoch, index) + step  # optimizer steps done before this one
            # Stochastic depth draws from torch's generator: seed it from the cursor, so a resumed
            # run draws what the uninterrupted one did (no RNG state to carry in checkpoints).
            torch.manual_seed(hash((cfg.train.seed, global_step, self.rank)) % 2**63)
            loss, task = self.optimizer_step(batch, heads=heads, c=c)
            losses.append(loss)
            tasks.append(task)
            if schedule.ema_per_step:
                ema = {"ema/r": global_step, "ema/momentum": schedule.step_momentum(global_step)}
                self.update_teacher(ema["ema/momentum"])
            self.last_step_end = time.perf_counter()
            step_s.append(self.last_step_end - began)
            if cfg.train.checkpoint_every and (step + 1) % cfg.train.checkpoint_every == 0 and step + 1 < self.steps[index]:
                self.save(Cursor(epoch, index, step + 1), {"loss": loss, "epoch": epoch, "round": index})
        if not schedule.ema_per_step:
            ema = {"ema/r": schedule.round_index(epoch, index), "ema/momentum": schedule.round_momentum(epoch, index)}
            self.update_teacher(ema["ema/momentum"])
        if step_s:
            clock["time/step_median_s"] = statistics.median(step_s)
        name = "interleaved" if self.interleaved else heads[0][0]
        return {f"loss/{name}": sum(losses) / max(len(losses), 1), f"loss/task/{name}": sum(tasks) / max(len(tasks), 1),
                "consistency/coef": c, **ema, "lr": self.engine.get_lr()[0], "optim/steps": self.engine.global_steps,
                "epoch": epoch, "round": index, **clock, **self.meter.metrics()}

    def optimizer_step(self, batch: dict, *, heads: list[tuple[str, str]], c: float) -> tuple[float, float]:
        """One optimizer step on this rank's share of the global batch, as `engine.grad_accum`
        micro-batches (DeepSpeed averages their gradients and steps after the last one); returns
        the mean (loss, task loss) over the micro-batches."""
        loss_sum = task_sum = 0.0
        parts = micro_batches(batch, self.cfg.engine.grad_accum)
        for micro in parts:
            loss, task = ark_loss(self.engine, self.teacher, micro, heads=heads, c=c, size=self.cfg.data.views.image_size,
                                  dtype=self.dtype, device=self.device)
            self.engine.backward(loss)
            self.engine.step()  # an optimizer step only at the last micro-batch
            loss_sum, task_sum = loss_sum + loss.item(), task_sum + task.item()
        return loss_sum / len(parts), task_sum / len(parts)

    def evaluate(self, *, final: bool = False) -> dict:
        """Every dataset's val and test AUCs, per subgroup too; the `final` evaluation also writes
        the teacher's per-class subgroup table with bootstrap intervals (rank 0)."""
        out, tables = {}, {}
        student = self.engine.module
        student.eval()
        for entry in self.entries:
            for split in ("val", "test"):
                if split not in entry["splits"] or not entry["splits"][split]["num_samples"]:
                    continue
                intervals = ("teacher",) if final and split == "test" and self.rank == 0 else ()
                results = evaluate({"student": student, "teacher": self.teacher}, entry, split, data_config=self.cfg.data,
                                   seed=self.cfg.train.seed, rank=self.rank, world=self.world,
                                   batch_size=self.micro, device=self.device, dtype=self.dtype, intervals=intervals)
                for model, summary in results.items():
                    out[f"auc/{split}/{entry['name']}/{model}"] = summary["auc"]  # over data.metric_labels
                    if "auc_all" in summary:
                        out[f"auc_all/{split}/{entry['name']}/{model}"] = summary["auc_all"]
                    out.update(group_metrics(summary.get("groups", {}), split=split, dataset=entry["name"], model=model))
                    if summary.get("subgroup_rows"):
                        tables[entry["name"]] = summary["subgroup_rows"]
        if tables:
            write_subgroups(run_url(self.cfg), tables, title="teacher, test split, final evaluation")
        student.train()
        for split in ("val", "test"):  # the sweep's default metric: the teacher's mean val AUC over datasets
            for model in ("student", "teacher"):
                values = [out[f"auc/{split}/{e['name']}/{model}"] for e in self.entries
                          if f"auc/{split}/{e['name']}/{model}" in out]
                if not values:
                    continue
                # A dataset whose split lacks a class gives NaN; the mean is over the others, and NaN
                # (still reported, so a sweep on it sees the evaluation) when none has an AUC.
                values = [v for v in values if v == v]
                out[f"auc/{split}/mean/{model}"] = sum(values) / len(values) if values else float("nan")
        return out

    def fit(self) -> None:
        import ray.train
        import torch.distributed as dist

        from ark_dist.track.tracker import open_tracker

        self.restore()
        cfg = self.cfg
        if self.rank == 0:
            write_config(cfg)
        tracker = open_tracker(cfg, rank=self.rank, run_dir=run_url(cfg), run_id=run_id(cfg))
        loader = self.loader()
        for epoch in range(self.cursor.epoch, cfg.train.epochs):
            first = self.cursor.round if epoch == self.cursor.epoch else 0
            for index in range(first, len(self.steps)):
                start = self.cursor.step if (epoch, index) == (self.cursor.epoch, self.cursor.round) else 0
                metrics = self.train_round(loader, epoch, index, start)
                digests = [None] * self.world
                dist.all_gather_object(digests, teacher_digest(self.teacher))
                metrics["teacher/ranks_identical"] = float(len(set(digests)) == 1)
                if index == len(self.steps) - 1 and ((epoch + 1) % cfg.train.eval_every == 0 or epoch + 1 == cfg.train.epochs):
                    metrics.update(self.evaluate(final=epoch + 1 == cfg.train.epochs))
                following = Cursor(epoch + 1, 0, 0) if index + 1 == len(self.steps) else Cursor(epoch, index + 1, 0)
                metrics.update(memory_metrics(self.device), epochs_done=epoch + (index + 1) / len(self.steps))
                if self.last_save_s is not None:
                    metrics["time/checkpoint_s"] = self.last_save_s  # the previous round's
                self.log(" ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, float)))
                step = self.schedule.first_step(epoch, index + 1)  # optimizer steps done after this round
                self.history.append({"step": step, "time": time.time(), **metrics})
                if self.rank == 0:
                    write_metrics(cfg, self.history)
                tracker.log(metrics, step=step)
                done = self.schedule.round_index(epoch, index) + 1  # rounds done, this one included
                if done % cfg.train.checkpoint_rounds == 0 or done == self.schedule.total_rounds:
                    saving = time.perf_counter()
                    self.save(following, metrics)
                    self.last_save_s = time.perf_counter() - saving  # logged with the next round
                else:  # every rank reports (Tune and the driver see every round), without a checkpoint
                    ray.train.report(metrics)
                    self.last_save_s = None
        loader.close()
        tracker.finish()


def group_metrics(groups: dict[str, float], *, split: str, dataset: str, model: str) -> dict[str, float]:
    """`evaluate`'s subgroup AUCs as metrics: `auc_group/<split>/<dataset>/<model>/<attribute>=<group>`
    and `auc_gap/<split>/<dataset>/<model>/<attribute>`."""
    return {(f"auc_gap/{split}/{dataset}/{model}/{key[4:]}" if key.startswith("gap/")
             else f"auc_group/{split}/{dataset}/{model}/{key}"): value for key, value in groups.items()}


def write_subgroups(folder: str, tables: dict[str, list[dict]], *, title: str) -> None:
    """`subgroups.json` ({dataset: interval rows}) and `subgroups.md` into a run folder, each whole."""
    from ark_dist.fs import join, write_atomic
    from ark_dist.train.subgroups import markdown

    write_atomic(join(folder, SUBGROUPS + ".json"), json.dumps(tables, indent=1).encode())
    text = "".join(markdown(rows, title=f"{name}: {title}") + "\n" for name, rows in tables.items())
    write_atomic(join(folder, SUBGROUPS + ".md"), text.encode())


def quiet_report_lines() -> None:
    """Ray Train logs every `ray.train.report` with its whole metrics dict (hundreds of keys here) at
    INFO, under a logger named after its file, which `RunConfig.logging_config` does not reach; our
    own round line says the same in one line."""
    from ray.train.v2._internal.execution import context

    logging.getLogger(context.__file__).setLevel(logging.WARNING)


def train_loop(config: dict) -> None:
    """Ray Train's entry on every worker."""
    import deepspeed

    cfg = from_dict(Config, config)
    engines.cpu_threads(cfg)
    quiet_report_lines()
    deepspeed.init_distributed(dist_backend="nccl" if cfg.engine.use_gpu else "gloo")
    if cfg.finetune.target is not None:  # a fine-tune (launch.py finetune) rather than Ark's pretraining
        from ark_dist.reuse.finetune_worker import FineTune

        FineTune(cfg).fit()
    elif cfg.method.foundation.steps:  # Foundation X: (dataset, task) passes with Lock-Release
        from ark_dist.train.foundation_worker import FoundationRun

        FoundationRun(cfg).fit()
    else:
        Run(cfg).fit()

"""Fine-tuning on a Ray Train worker (`launch.py finetune`, ark_dist/reuse/finetune.py): `FineTune`
runs in place of Ark's `Run` whenever `finetune.target` is set (train/worker.py's `train_loop`).

- the model is the backbone of `finetune.init` with a new linear head for the target (BenchmarkTransformers
  replaces the classifier; Ark's projector and heads are left out, and the log names them);
- an epoch is one pass over the target's train split (`data.sampling`), the loss its task loss;
- after every epoch the validation split (centre crop) gives the loss that picks the best epoch and
  stops the run once more than `finetune.patience` epochs in a row brought no lower one;
- at the end the best epoch's weights score the test split (ten crops, probabilities averaged).
"""

from __future__ import annotations

import dataclasses
import json
import time

import numpy as np
import torch

from ark_dist.config import Config, to_dict
from ark_dist.fs import join, write_atomic

RESULTS = "results.json"  # a trial's final figures, in its run folder
BEST = "best.safetensors"  # the best epoch's model, in a checkpoint and (exported) in the run folder


# -- the model ---------------------------------------------------------------------------------
def finetune_model(cfg: Config, *, labels: list[str], log=print):
    """The backbone of `finetune.init` and a new linear head `{target: len(labels)}` on its pooled
    features (seeded by the caller's torch RNG). The init's projector and heads are named as unused."""
    from ark_dist.model import ArkModel
    from ark_dist.reuse.init import load_model

    target = cfg.finetune.target
    with torch.random.fork_rng(devices=[]):  # the head's initialisation depends on the seed alone
        source, heads = load_model(cfg.finetune.init, model=cfg.model, heads={target: labels}, log=log)
    model = ArkModel(dataclasses.replace(source.config, projector="none"), heads={target: len(labels)})
    model.backbone.load_state_dict(source.backbone.state_dict())
    unused = [name for name, _ in source.named_parameters() if not name.startswith("backbone.")]
    if cfg.finetune.init != "random":
        log(f"fine-tune: backbone of {cfg.finetune.init} ({len(source.backbone.state_dict())} tensors); "
            f"a new head for {target} ({len(labels)} classes); not used: {', '.join(unused) or 'nothing'}")
    return model.train()


# -- the worker --------------------------------------------------------------------------------
class FineTune:
    """One rank of a fine-tuning run."""

    def __init__(self, cfg: Config):
        from ark_dist.data import Cursor, DataMeter, dataset_entry
        from ark_dist.data.stream import round_steps, subset_entries
        from ark_dist.train import engine as engines
        from ark_dist.train.worker import LOG, placement, store_manifest

        self.cfg, self.logger = cfg, LOG
        self.rank, self.world, self.device, self.dtype = placement(cfg)
        self.manifest_sha256, manifest = store_manifest(cfg)
        target = cfg.finetune.target
        entry = dataset_entry(manifest, target, splits=("train", "val", "test"))
        self.entry = subset_entries([entry], cfg.data)[0]
        self.labels = {target: list(entry["labels"])}
        torch.manual_seed(cfg.train.seed)
        model = finetune_model(cfg, labels=self.labels[target], log=self.log)
        if cfg.finetune.freeze == "backbone":
            model.backbone.requires_grad_(False)
        self.steps = round_steps(self.entry, global_batch=cfg.train.global_batch, max_steps=cfg.data.max_steps_per_round)
        self.micro = cfg.train.global_batch // (self.world * cfg.engine.grad_accum)
        self.engine = engines.build(model.to(self.device), cfg, micro_batch=self.micro,
                                    total_steps=cfg.train.epochs * self.steps,
                                    warmup_steps=int(cfg.optim.warmup_epochs * self.steps))
        self.cursor, self.meter, self.history = Cursor(), DataMeter(), []
        self.best: dict | None = None  # {"epoch", "loss", "tensors"}: the epoch of the lowest validation loss
        self.waited = 0  # epochs since the best one
        self.stopped = False  # early stopping ended the epochs

    def log(self, line: str) -> None:
        if self.rank == 0:
            self.logger.info("[ark-dist] %s", line)

    def train_mode(self) -> None:
        """Training mode, except a frozen backbone: it stays in eval mode (no stochastic depth)."""
        self.engine.module.train()
        if self.cfg.finetune.freeze == "backbone":
            self.engine.module.backbone.eval()

    # -- checkpoints ---------------------------------------------------------------------------
    def state(self, epoch: int) -> dict:
        best = None if self.best is None else {k: v for k, v in self.best.items() if k != "tensors"}
        return {"cursor": {"epoch": epoch, "round": 0, "step": 0}, "labels": self.labels,
                "manifest_sha256": self.manifest_sha256, "config": to_dict(self.cfg), "finetune": {
                    "best": best, "waited": self.waited, "stopped": self.stopped}}

    def save(self, epoch: int, metrics: dict) -> None:
        import tempfile

        import ray.train
        from safetensors.torch import save_file

        from ark_dist.train.worker import write_state

        with tempfile.TemporaryDirectory() as folder:
            self.engine.save_checkpoint(folder, tag="engine")
            if self.rank == 0:
                save_file(self.best["tensors"], f"{folder}/{BEST}")
                write_state(folder, self.state(epoch), self.history)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))

    def restore(self) -> None:
        from safetensors.torch import load_file

        from ark_dist.data import Cursor
        from ark_dist.train.worker import restored

        with restored(self.engine, self.cfg) as found:
            if found is None:
                return
            folder, state, self.history, path = found
            if state.get("labels") != self.labels or "finetune" not in state:
                raise ValueError(f"checkpoint {path} is not a fine-tune of {list(self.labels)}; start a new run name")
            progress = state["finetune"]
            self.best = {**progress["best"], "tensors": load_file(f"{folder}/{BEST}")}
            self.waited, self.stopped = progress["waited"], progress["stopped"]
            self.cursor = Cursor(**state["cursor"])
        self.log(f"resumed at epoch {self.cursor.epoch}")

    # -- training ------------------------------------------------------------------------------
    def optimizer_step(self, batch: dict) -> float:
        from ark_dist.data import canvases, render
        from ark_dist.method import task_loss
        from ark_dist.train.step import micro_batches

        target, kind = self.cfg.finetune.target, self.entry["task"]
        # Stochastic depth draws from torch's generator: seeded by the optimizer step, so a resumed
        # run draws what the uninterrupted one did (as the pretraining worker does).
        torch.manual_seed(hash((self.cfg.train.seed, self.engine.global_steps, self.rank)) % 2**63)
        total = 0.0
        parts = micro_batches(batch, self.cfg.engine.grad_accum)
        for micro in parts:
            images = render(canvases(micro, self.device), theta=micro["theta_student"].to(self.device),
                            size=self.cfg.data.views.image_size, photo=micro["photo"].to(self.device))
            logits = self.engine(images.to(self.dtype), heads=[target]).logits[target]
            loss = task_loss(logits, target=micro["target"].to(self.device), mask=micro["mask"].to(self.device),
                             task=kind)
            self.engine.backward(loss)
            self.engine.step()
            total += loss.item()
        return total / len(parts)

    def score(self, model: torch.nn.Module, split: str, *, intervals: bool = False) -> dict:
        """`train.evaluate.evaluate` of `model` on `split`: validation through the centre crop, the
        test split through ten crops (`finetune.test_ten_crop`); with `intervals` (on this rank)
        the per-class subgroup table too."""
        from ark_dist.train.evaluate import evaluate

        views = dataclasses.replace(self.cfg.data.views, ten_crop=split == "test" and self.cfg.finetune.test_ten_crop)
        data = dataclasses.replace(self.cfg.data, views=views)
        model.eval()
        try:
            return evaluate({"model": model}, self.entry, split, data_config=data, seed=self.cfg.train.seed,
                            rank=self.rank, world=self.world, batch_size=self.micro, device=self.device,
                            dtype=self.dtype, intervals=("model",) if intervals else ())["model"]
        finally:
            self.train_mode()

    def best_model(self) -> torch.nn.Module:
        """The best epoch's weights in a plain fp32 model (any ZeRO stage)."""
        from ark_dist.model import ArkModel

        model = ArkModel(self.engine.module.config, heads={self.cfg.finetune.target: len(self.entry["labels"])})
        model.load_state_dict(self.best["tensors"])
        return model.to(self.device)

    def fit(self) -> None:
        import ray.train

        from ark_dist.data import RunLoader
        from ark_dist.track.runfolder import memory_metrics, run_id, run_url, write_config, write_metrics
        from ark_dist.track.tracker import open_tracker
        from ark_dist.train.engine import gathered_parameters
        from ark_dist.train.worker import tensors

        cfg, target = self.cfg, self.cfg.finetune.target
        self.restore()
        if self.rank == 0:
            write_config(cfg)
        tracker = open_tracker(cfg, rank=self.rank, run_dir=run_url(cfg), run_id=run_id(cfg))
        self.train_mode()
        epochs = range(self.cursor.epoch, 0 if self.stopped else cfg.train.epochs)
        loader = RunLoader(entries=[self.entry], interleaved=False, config=cfg.data, seed=cfg.train.seed,
                           cursor=self.cursor, rank=self.rank, world=self.world, global_batch=cfg.train.global_batch,
                           epochs=cfg.train.epochs) if len(epochs) else None
        for epoch in epochs:
            losses = [self.optimizer_step(batch) for batch in self.meter.wrap(loader.round(epoch, 0))]
            val = self.score(self.engine.module, "val")
            if self.best is None or val["loss"] < self.best["loss"]:
                with gathered_parameters(self.engine):  # a copy: on the CPU .cpu() would alias the live weights
                    self.best = {"epoch": epoch, "loss": val["loss"],
                                 "tensors": {k: v.clone() for k, v in tensors(self.engine.module).items()}}
                self.waited = 0
            else:
                self.waited += 1
            self.stopped = self.waited > cfg.finetune.patience  # BenchmarkTransformers' rule
            metrics = {f"loss/{target}": float(np.mean(losses)) if losses else float("nan"),
                       f"val_loss/{target}": val["loss"], f"auc/val/{target}/student": val["auc"],
                       "auc/val/mean/student": val["auc"], "best/epoch": self.best["epoch"],
                       "best/val_loss": self.best["loss"], "early_stop/waited": self.waited,
                       "lr": self.engine.get_lr()[0], "optim/steps": self.engine.global_steps, "epoch": epoch,
                       "epochs_done": epoch + 1, **memory_metrics(self.device), **self.meter.metrics()}
            self.log(" ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, float)))
            self.history.append({"step": (epoch + 1) * self.steps, "time": time.time(), **metrics})
            if self.rank == 0:
                write_metrics(cfg, self.history)
            tracker.log(metrics, step=(epoch + 1) * self.steps)
            done = epoch + 1
            if done % cfg.train.checkpoint_rounds == 0 or done == cfg.train.epochs or self.stopped:
                self.save(done, metrics)
            else:
                ray.train.report(metrics)
            if self.stopped:
                self.log(f"early stop after epoch {epoch}: no lower validation loss for {self.waited} epochs "
                         f"(best: epoch {self.best['epoch']}, {self.best['loss']:.4g})")
                break
        if loader is not None:
            loader.close()
        self.finish(tracker)

    def finish(self, tracker) -> None:
        """The best epoch's model on the validation and test splits (and the test split per
        subgroup); rank 0 writes `results.json`, `subgroups.md`/`.json` and the model as an
        ark-dist export (`best.safetensors`) into the run folder."""
        import ray.train

        from ark_dist.track.runfolder import run_url
        from ark_dist.train.evaluate import metric_classes
        from ark_dist.train.worker import group_metrics, write_subgroups

        cfg, target = self.cfg, self.cfg.finetune.target
        model = self.best_model()
        test, val = self.score(model, "test", intervals=self.rank == 0), self.score(model, "val")
        rows = test.pop("subgroup_rows", None)
        results = {"target": target, "seed": cfg.train.seed, "best_epoch": self.best["epoch"],
                   "best_val_loss": self.best["loss"], "stopped_early": self.stopped,
                   "epochs_trained": len(self.history), "metric_labels": metric_classes(self.entry, cfg.data),
                   "val": val, "test": test}
        metrics = {f"auc/test/{target}/best": test["auc"], f"auc/val/{target}/best": val["auc"],
                   **{f"test/{k}": v for k, v in test.items() if k != "groups"}, "best/epoch": self.best["epoch"],
                   **group_metrics(test.get("groups", {}), split="test", dataset=target, model="best")}
        if self.rank == 0:
            from safetensors.torch import save

            from ark_dist.export import exported_tensors, metadata

            state = self.state(self.best["epoch"] + 1)
            meta = metadata(model, state, source=run_url(cfg), which="finetuned")
            write_atomic(join(run_url(cfg), BEST), save(exported_tensors(model.cpu()), metadata=meta))
            write_atomic(join(run_url(cfg), RESULTS), json.dumps(results, indent=1).encode())
            if rows:
                write_subgroups(run_url(cfg), {target: rows}, title="the best epoch, test split")
        # W&B and Ray get the closing figures; metrics.jsonl keeps one row per epoch (report's x axis).
        tracker.log(metrics, step=len(self.history) * self.steps)
        tracker.finish()
        ray.train.report(metrics)

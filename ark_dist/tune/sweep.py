"""Ray Tune sweeps. Every trial is one Ark training run: a Tune function trainable that builds and
runs a `TorchTrainer` with its own workers (Train V2 cannot hand a trainer to `Tuner`; DESIGN 5).
Rank 0's evaluation reports reach Tune through a Train callback; ASHA stops the worst trials."""

from __future__ import annotations

import copy
import json
import logging
import math

from ark_dist.config import Config, to_dict
from ark_dist.configtree import apply_overrides, from_dict
from ark_dist.fs import join
from ark_dist.train.run import storage

log = logging.getLogger(__name__)

DRIVER_MEMORY = 256 * 2**20  # what a trial's trainable reserves (bytes of Ray's logical memory)
TRIALS = "trials"  # <storage>/<sweep>/trials/<trial id>: each trial's run folder (checkpoints, metrics)


def _overrides(params: dict) -> list[str]:
    return [f"{key}={json.dumps(value)}" for key, value in params.items()]  # JSON is YAML: types survive


def check_space(cfg: Config) -> None:
    """Every key of `tune.space` names a config key, and every value it can take is valid there;
    ASHA needs an evaluation inside its grace period. ValueError naming the key otherwise."""
    base, t = to_dict(cfg), cfg.tune
    for key, spec in t.space.items():
        if key.split(".")[0] == "tune":
            raise ValueError(f"tune.space.{key}: a sweep cannot sweep its own `tune` section")
        (kind, values), = spec.items()
        if kind in ("grid", "choice"):
            probes = values
        else:  # the bounds (randint excludes its high)
            probes = [values[0], values[1] - 1] if kind == "randint" else values[:2]
        for value in probes:
            try:
                from_dict(Config, apply_overrides(copy.deepcopy(base), _overrides({key: value})))
            except ValueError as exc:
                raise ValueError(f"tune.space.{key} ({kind} {value!r}): {exc}") from None
    if t.scheduler == "asha" and t.grace_period < cfg.train.eval_every:
        raise ValueError(f"tune.grace_period {t.grace_period} is shorter than train.eval_every "
                         f"{cfg.train.eval_every}: ASHA only sees `{t.metric}` at evaluations")


def search_space(space: dict) -> dict:
    """`tune.space` as Tune samplers, keyed by the same dotted keys."""
    from ray import tune

    samplers = {"grid": tune.grid_search, "choice": tune.choice, "uniform": lambda v: tune.uniform(*v),
                "loguniform": lambda v: tune.loguniform(*v), "randint": lambda v: tune.randint(*v),
                "quniform": lambda v: tune.quniform(*v)}
    return {key: samplers[kind](values) for key, spec in space.items() for kind, values in spec.items()}


def trial_config(base: dict, params: dict, *, trial_id: str) -> Config:
    """The sweep's config with the trial's sampled keys, its own run folder and W&B run."""
    data = apply_overrides(copy.deepcopy(base), _overrides(params))
    sweep = data["tune"]["name"]
    data["train"].update(storage_path=join(data["train"]["storage_path"], sweep, TRIALS), name=trial_id)
    data["tracking"]["group"] = data["tracking"]["group"] or sweep
    data["tracking"]["run_name"] = data["tracking"]["run_name"] or f"{sweep}-{trial_id}"
    return from_dict(Config, data)


def _evaluations_to_tune(metric: str):
    """A Train callback that forwards rank 0's reports to Tune, but only those that carry the
    metric (evaluation rounds): Tune rejects results without it."""
    from ray.tune.integration.ray_train import TuneReportCallback

    class EvaluationsToTune(TuneReportCallback):
        def after_report(self, run_context, metrics, checkpoint):
            if metrics and metric in metrics[0]:
                super().after_report(run_context, metrics, checkpoint)

    return EvaluationsToTune()


def run_trial(params: dict, *, base: dict) -> None:
    """Tune's function trainable: one training run. When ASHA stops the trial, Ray ends this actor
    and with it the trainer's controller, its workers and their placement group."""
    from ray import tune

    from ark_dist.train.run import trainer

    cfg = trial_config(base, params, trial_id=tune.get_context().get_trial_id())
    result = trainer(cfg, max_failures=cfg.tune.max_failures, callbacks=[_evaluations_to_tune(cfg.tune.metric)]).fit()
    if result.error:
        raise result.error


def trial_resources(cfg: Config) -> dict[str, float]:
    """What one trial's workers reserve (the trainable itself reserves nothing: it only waits)."""
    e = cfg.engine
    return {"CPU": e.num_workers * e.cpus_per_worker, **({"GPU": e.num_workers} if e.use_gpu else {})}


def concurrent_trials(cfg: Config) -> int:
    """`tune.max_concurrent_trials`, or as many trials as the cluster's CPUs/GPUs fit at once (more
    would start trainables that only wait for workers)."""
    import ray

    if cfg.tune.max_concurrent_trials:
        return cfg.tune.max_concurrent_trials
    cluster = ray.cluster_resources()
    fits = [math.floor(cluster.get(k, 0) / v) for k, v in trial_resources(cfg).items() if v]
    if min(fits, default=1) < 1:
        raise ValueError(f"one trial needs {trial_resources(cfg)} but the Ray cluster has "
                         f"{ {k: cluster.get(k, 0) for k in trial_resources(cfg)} }: lower engine.num_workers")
    return min(fits, default=1)


def tuner(cfg: Config):
    """A new `Tuner`, or the interrupted sweep of the same `tune.name` restored (unfinished and
    errored trials resume from their own checkpoints)."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    t = cfg.tune
    # The trainable only waits on its TorchTrainer, whose workers reserve their own CPUs/GPUs: it asks
    # for no CPU (Tune needs some resource in a bundle, so a little of Ray's logical memory).
    trainable = tune.with_resources(tune.with_parameters(run_trial, base=to_dict(cfg)),
                                    {"CPU": 0, "memory": DRIVER_MEMORY})
    path = join(storage(cfg.train.storage_path), t.name)
    if tune.Tuner.can_restore(path):
        return tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=True)
    scheduler = (ASHAScheduler(time_attr="epochs_done", max_t=cfg.train.epochs, grace_period=t.grace_period,
                               reduction_factor=t.reduction_factor) if t.scheduler == "asha" else FIFOScheduler())
    return tune.Tuner(
        trainable,
        param_space=search_space(t.space),
        tune_config=tune.TuneConfig(metric=t.metric, mode=t.mode, scheduler=scheduler, num_samples=t.num_samples,
                                    max_concurrent_trials=concurrent_trials(cfg)),
        run_config=tune.RunConfig(name=t.name, storage_path=storage(cfg.train.storage_path)),
    )


def _job_placement_groups() -> dict[str, object]:
    """{id: PlacementGroup} of the live, non-detached placement groups this Ray job created."""
    import ray
    from ray.util.placement_group import PlacementGroup
    from ray.util.state import list_placement_groups

    job = ray.get_runtime_context().get_job_id()
    return {pg.placement_group_id: PlacementGroup(ray.PlacementGroupID(bytes.fromhex(pg.placement_group_id)))
            for pg in list_placement_groups(detail=True, limit=10_000, raise_on_missing_output=False)
            if pg.creator_job_id == job and pg.state != "REMOVED" and not pg.is_detached}


def sweep(tuned, *, wait_s: float = 20.0):
    """`tuned.fit()`, then free what stopped trials left reserved. A trial that ASHA stops dies
    with its Train controller; Ray Train's placement-group cleaner (a detached actor polling the
    state API every second) then removes the workers' placement group, but on a busy node it can
    lag or miss one, which stays reserved until this job ends: for the rest of a notebook, or a
    driver that sweeps again. Every trial has ended when `fit` returns, so a placement group this
    job created during the sweep and still holds after `wait_s` is removed, with a warning."""
    import time

    from ray.util.placement_group import remove_placement_group

    before = set(_job_placement_groups())
    results = tuned.fit()
    deadline = time.monotonic() + wait_s
    while (left := {k: v for k, v in _job_placement_groups().items() if k not in before}) and \
            time.monotonic() < deadline:
        time.sleep(0.5)
    for pg_id, pg in left.items():
        log.warning("placement group %s of a finished trial was still reserved %.0f s after the sweep: removed it",
                    pg_id, wait_s)
        remove_placement_group(pg)
    return results

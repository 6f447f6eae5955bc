"""The driver: a Ray Train `TorchTrainer` over `train_loop`, resumable by name."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ark_dist.config import Config, to_dict

log = logging.getLogger(__name__)


def storage(path: str) -> str:
    return path if "://" in path else str(Path(path).resolve())


def storage_filesystem(path: str):
    """Ray Train's (storage_path, storage_filesystem) for a run folder. An object store is reached
    through s3fs with `fs.S3_RETRIES`: pyarrow's own S3 client gives up after 3 quick attempts, and
    its retry setting is lost when Ray pickles the filesystem to the workers, so an endpoint down
    for a few seconds during a checkpoint upload would fail the upload and restart the workers."""
    if not path.startswith("s3://"):
        return storage(path), None
    import s3fs
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    from ark_dist.fs import s3_options

    return path.removeprefix("s3://"), PyFileSystem(FSSpecHandler(s3fs.S3FileSystem(**s3_options())))


def preflight(cfg: Config) -> None:
    """Fail in the driver, in one line, before any worker starts: the store, the manifest and
    every dataset of the recipe must be there."""
    from ark_dist.data import Store, canvas_warnings, dataset_entry, read_manifest

    from ark_dist.train.evaluate import metric_classes

    manifest = read_manifest(Store(cfg.data.store))
    entries = [dataset_entry(manifest, name) for name in cfg.data.datasets]
    for entry in entries:
        metric_classes(entry, cfg.data)  # a headline class the manifest lacks
    for line in canvas_warnings(entries, load_size=cfg.data.views.load_size):
        log.warning(line)
    if cfg.data.train_only:
        from ark_dist.data.stream import train_only

        for name, keys in train_only(cfg.data.train_only).items():
            if name in cfg.data.datasets:
                log.warning("data.train_only=%s: %s trains on %d samples", cfg.data.train_only, name, len(keys))
    if cfg.data.exclude:
        from ark_dist.data.stream import excluded

        keys = [k for k in excluded(cfg.data.exclude) if k.split("/")[0] in cfg.data.datasets]
        log.warning("data.exclude=%s: %d samples of this run's datasets are left out of training and evaluation",
                    cfg.data.exclude, len(keys))
    check_model(cfg)


def check_model(cfg: Config) -> None:
    """The backbone is one timm knows and the pretrained weights exist, before any worker starts."""
    import timm

    from ark_dist.fs import filesystem

    if not timm.is_model(cfg.model.backbone):
        raise ValueError(f"model.backbone={cfg.model.backbone!r} is not a timm model "
                         f"(e.g. {', '.join(timm.list_models('swin_*')[:3])}, ...)")
    if url := cfg.model.pretrained:
        try:
            fs, path = filesystem(url)
            found = fs.isfile(path)
        except Exception as exc:  # an unreachable store: say which, in one line
            raise ValueError(f"model.pretrained={url!r}: cannot reach it ({type(exc).__name__}: {exc})") from exc
        if not found:
            raise ValueError(f"model.pretrained={url!r}: no such file")


def check_resources(cfg: Config, *, local: bool) -> None:
    """A run asks Ray for engine.num_workers x (cpus_per_worker CPUs [+ 1 GPU]) at once; on a
    cluster of fixed size that cannot hold it, Ray Train would wait forever. A local cluster (the
    one `start_ray` made) is fixed; a joined one may autoscale, so there it is only a warning."""
    import ray

    engine = cfg.engine
    need = {"CPU": engine.num_workers * engine.cpus_per_worker, "GPU": engine.num_workers if engine.use_gpu else 0}
    have = ray.cluster_resources()
    short = [f"{need[k]:g} {k}s (the cluster has {have.get(k, 0):g})" for k in need if need[k] > have.get(k, 0)]
    if not short:
        return
    text = (f"engine.num_workers={engine.num_workers} x engine.cpus_per_worker={engine.cpus_per_worker}"
            f"{' + 1 GPU each' if engine.use_gpu else ''} needs {' and '.join(short)}")
    if local:
        raise ValueError(f"{text}: lower engine.num_workers or engine.cpus_per_worker, or join a larger "
                         f"cluster with RAY_ADDRESS")
    log.warning("%s: waiting for the cluster to grow (autoscaling)", text)


def start_ray(*, verbose: bool = True) -> bool:
    """Join the cluster at RAY_ADDRESS, or start a local one; False when Ray was already up.
    `verbose=False` keeps the workers' output and Ray's INFO lines off the console
    (`log_to_driver=False`): it stays in Ray's session logs (`console.copy_ray_logs`). Workers
    import ark_dist from this checkout wherever the driver's working folder is."""
    import ray

    if ray.is_initialized():
        return False
    code = str(Path(__file__).resolve().parents[2])
    path = os.pathsep.join(p for p in (code, os.environ.get("PYTHONPATH")) if p)
    # The dashboard serves Ray's state API, which Train V2's placement-group cleaner polls: without
    # it, the workers' placement group of a run whose controller died (a Tune trial that ASHA
    # stopped) is never removed and starves every later trial.
    ray.init(address=os.environ.get("RAY_ADDRESS"), include_dashboard=True, log_to_driver=verbose,
             logging_level=logging.INFO if verbose else logging.ERROR, runtime_env={"env_vars": {"PYTHONPATH": path}})
    if not os.environ.get("RAY_ADDRESS"):
        _LOCAL_SESSIONS.add(ray.get_runtime_context().get_session_name())
    return True


_LOCAL_SESSIONS: set[str] = set()  # the local clusters start_ray started: fixed in size (check_resources)


def local_cluster() -> bool:
    """Whether Ray is a local cluster that `start_ray` started (in this call of `fit` or before it,
    e.g. by `launch.py demo`), as opposed to a joined or someone else's one."""
    import ray

    return ray.is_initialized() and ray.get_runtime_context().get_session_name() in _LOCAL_SESSIONS


def fast_reports() -> None:
    """A worker's `ray.train.report` waits until the Train controller has collected its previous
    one, and the controller polls its workers every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (2 s by
    default; Ray passes the driver's value on to the controller). Every round ends in a report, so
    rounds shorter than that stalled for up to 2 s at each boundary (1.8 s of a 1.9 s boundary in
    the demo). A poll every 0.05 s costs the controller next to nothing; a value set is kept."""
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.05")


def trainer(cfg: Config, *, max_failures: int, callbacks=()):
    """The `TorchTrainer` of one run: `engine.num_workers` workers, checkpoints in the run folder,
    `max_failures` worker-group restarts from the latest checkpoint."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from ark_dist.track.runfolder import run_url
    from ark_dist.train.resume import recorder, repair
    from ark_dist.train.worker import train_loop

    repair(run_url(cfg))
    engine = cfg.engine
    resources = {"CPU": engine.cpus_per_worker, **({"GPU": 1} if engine.use_gpu else {})}
    path, filesystem = storage_filesystem(cfg.train.storage_path)
    fast_reports()
    return TorchTrainer(
        train_loop,
        train_loop_config=to_dict(cfg),
        scaling_config=ScalingConfig(num_workers=engine.num_workers, use_gpu=engine.use_gpu,
                                     resources_per_worker=resources),
        run_config=RunConfig(name=cfg.train.name, storage_path=path, storage_filesystem=filesystem,
                             failure_config=FailureConfig(max_failures=max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints),
                             callbacks=[recorder(run_url(cfg)), *callbacks]),
    )


def fit(cfg: Config):
    """Train; re-running with the same `train.name` and `train.storage_path` resumes."""
    preflight(cfg)
    start_ray()
    check_resources(cfg, local=local_cluster())
    return trainer(cfg, max_failures=cfg.train.max_failures).fit()

"""Running a reuse command's pass on Ray Train workers: the stack training runs on (a local Ray
cluster, or the one at RAY_ADDRESS), with torch.distributed set up among the workers (gloo on the
CPU, NCCL on GPUs), and Ray's bookkeeping in the command's output folder."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ark_dist.fs import filesystem, join, write_atomic


def add_pass_arguments(p, *, out: str, view: str, batch_size: int, load: str) -> None:
    """The options every reuse pass shares: the store, the output folder, the one view, and the
    workers. `load` names the default canvas: "image" (the network input) or "crop" (input x 256/224,
    so the centre crop is the evaluation's)."""
    p.add_argument("--store", default="out/store", help="the shard store (default out/store)")
    p.add_argument("--out", default=out, help=f"folder (or s3:// prefix) for the results (default {out})")
    p.add_argument("--image-size", type=int, default=224, help="network input (Ark-6 224, Ark+ 768)")
    p.add_argument("--load-size", type=int, help="loader canvas (default: "
                   + ("the image size)" if load == "image" else "the image size x 256/224)"))
    p.add_argument("--view", choices=("centre", "whole"), default=view, help="centre crop or whole image (Ark+)")
    p.add_argument("--batch-size", type=int, default=batch_size)
    p.add_argument("--workers", type=int, default=1, help="Ray Train workers")
    p.add_argument("--gpu", action="store_true", help="one GPU per worker")
    p.add_argument("--cpus-per-worker", type=int, default=1, help="CPUs (torch threads) per worker")
    p.add_argument("--loader-workers", type=int, default=2, help="loader processes per worker")
    p.add_argument("--recipe", default=str(ARK6_RECIPE), help="for a published Ark file (no ark-dist metadata): the "
                   "recipe whose `model` section it was trained with (default configs/ark6.yaml, Ark-6's Swin-B)")
    p.set_defaults(load=load)


ARK6_RECIPE = Path(__file__).resolve().parents[2] / "configs" / "ark6.yaml"


def weights(urls: list[str], args) -> tuple[dict[str, dict[str, list[str]]], dict[str, dict]]:
    """({url: its heads' class names}, {url: {"model", "heads"}} for the published Ark files among
    them), checked in the driver before any worker starts (`init.describe`)."""
    from ark_dist.reuse.init import describe

    heads, published = {}, {}
    for url in urls:
        heads[url], model = describe(url, recipe=args.recipe)
        if model is not None:
            published[url] = {"model": model, "heads": heads[url]}
    return heads, published


def load_weights(url: str, config: dict, *, rank: int):
    """`init.load_model` on a worker, with the model and heads `weights` found for a published file."""
    from ark_dist.configtree import from_dict
    from ark_dist.model.config import ModelConfig
    from ark_dist.reuse.init import load_model

    spec = config.get("published", {}).get(url)
    return load_model(url, model=from_dict(ModelConfig, spec["model"]) if spec else None,
                      heads=spec["heads"] if spec else None, log=print if rank == 0 else (lambda *_: None))


def pass_config(args, reads: list[str], **extra) -> dict:
    """The workers' config from `add_pass_arguments`' options, the datasets the pass `reads`, and
    the command's own `extra`."""
    load = args.load_size or (args.image_size if args.load == "image" else round(args.image_size * 256 / 224))
    data = {"store": {"url": args.store}, "datasets": list(reads), "num_workers": args.loader_workers,
            "views": {"image_size": args.image_size, "load_size": load}}
    return {"data": data, "batch_size": args.batch_size, "use_gpu": args.gpu, "view": args.view, "out": args.out,
            "cpus": args.cpus_per_worker, **extra}


def run_pass(loop, config: dict, args, *, name: str) -> list[dict]:
    """`run` with the workers `add_pass_arguments` asked for."""
    return run(loop, config, workers=args.workers, use_gpu=args.gpu, out=args.out, name=name,
               cpus=args.cpus_per_worker)


def run(loop, config: dict, *, workers: int, use_gpu: bool, out: str, name: str, cpus: int = 1) -> list[dict]:
    """`loop(config)` on every one of `workers` workers (`cpus` CPUs each); returns what each rank
    passed to `report`, in rank order (Ray Train keeps metrics only with checkpoints, and these
    passes save none)."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from ark_dist.train.run import fast_reports, start_ray, storage_filesystem

    if workers < 1:
        raise ValueError(f"--workers {workers} must be at least 1")
    start_ray(verbose=False)
    fast_reports()
    path, storage = storage_filesystem(join(out, "ray"))
    config = {**config, "reports": join(out, "ray", name)}
    trainer = TorchTrainer(loop, train_loop_config=config,
                           scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu,
                                                        resources_per_worker={"CPU": cpus, **({"GPU": 1} if use_gpu else {})}),
                           run_config=RunConfig(name=name, storage_path=path, storage_filesystem=storage,
                                                failure_config=FailureConfig(max_failures=0)))
    result = trainer.fit()
    if result.error is not None:
        raise RuntimeError(f"{name} failed on a worker: {result.error}") from result.error
    found = []
    for rank in range(workers):
        fs, path = filesystem(join(config["reports"], f"rank-{rank}.json"))
        found.append(json.loads(fs.cat_file(path)))
    return found


def report(config: dict, metrics: dict) -> None:
    """This rank's results, where `run` reads them back (and to Ray Train)."""
    import ray.train

    rank, _ = context(config)
    write_atomic(join(config["reports"], f"rank-{rank}.json"), json.dumps(metrics).encode())
    ray.train.report(metrics)


def context(config: dict) -> tuple[int, int]:
    """(rank, world) of this worker, whose torch uses the CPUs Ray gave it (Ray's default is one thread)."""
    import ray.train
    import torch

    if not config.get("use_gpu"):
        torch.set_num_threads(config.get("cpus", 1))
    ctx = ray.train.get_context()
    return ctx.get_world_rank(), ctx.get_world_size()


def device(use_gpu: bool):
    import torch

    return torch.device("cuda", torch.cuda.current_device()) if use_gpu else torch.device("cpu")


def show(out: str, table: str, *written: str) -> int:
    """Print rank 0's table from the output folder and what was written; exit status 0."""
    fs, path = filesystem(join(out, table))
    print(fs.cat_file(path).decode(), end="")
    print(f"wrote {', '.join(join(out, name) for name in (table, *written))}")
    return 0


def fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2

"""`python launch.py embed --checkpoint X --store URL --datasets D ... --out URL`

Distributed batch inference over any datasets and splits of a store: every sample once, one
deterministic view, on Ray Train workers. Shard j of a (dataset, split) goes to worker j % world,
and each shard's embeddings become one Parquet file,
`<out>/<dataset>/<split>/<shard name>.parquet`, written whole or not at all: a re-run skips the
files already there (resumable by shard).

Columns: `dataset`, `split`, `id`, `target` and `mask` (the dataset's head, by its label policy),
`sex`, `age`, `view` (null where the dataset does not say), `backbone` (the pooled feature) and
`projector` (the projector's); the schema metadata `ark_dist` holds {"labels": {dataset: classes},
"source": the weights}. `launch.py probe` reads them.
"""

from __future__ import annotations

import argparse
import io
import json
import posixpath
import time

from ark_dist.fs import filesystem, join, write_atomic
from ark_dist.reuse import workers

SPLITS = ("train", "val", "test")


def part_url(out: str, dataset: str, split: str, shard: dict) -> str:
    return join(out, dataset, split, posixpath.basename(shard["url"]).removesuffix(".tar") + ".parquet")


def table_bytes(result: dict, *, dataset: str, split: str, labels: list[str], source: str) -> bytes:
    """One shard's `infer` result as Parquet bytes, in the documented columns."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    groups = result["subgroups"]
    columns = {
        "dataset": pa.array([dataset] * len(result["ids"]), pa.string()),
        "split": pa.array([split] * len(result["ids"]), pa.string()),
        "id": pa.array(result["ids"], pa.string()),
        "target": pa.array(list(result["target"]), pa.list_(pa.float32())),
        "mask": pa.array(list(result["mask"]), pa.list_(pa.float32())),
        "sex": pa.array([g.get("sex") for g in groups], pa.string()),
        "age": pa.array([g.get("age") for g in groups], pa.float64()),
        "view": pa.array([g.get("view") for g in groups], pa.string()),
        "backbone": pa.array(list(result["backbone"]), pa.list_(pa.float32())),
        "projector": pa.array(list(result["projector"]), pa.list_(pa.float32())),
    }
    meta = {"ark_dist": json.dumps({"labels": {dataset: labels}, "source": source})}
    table = pa.table(columns).replace_schema_metadata(meta)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def loop(config: dict) -> None:
    """On every worker: its shards (j % world == rank) of every (dataset, split), those not written yet."""
    from ark_dist.configtree import from_dict
    from ark_dist.data import DataConfig, Store, read_manifest
    from ark_dist.reuse.infer import infer

    rank, world = workers.context(config)
    data = from_dict(DataConfig, config["data"])
    model, _ = workers.load_weights(config["checkpoint"], config, rank=rank)
    manifest = read_manifest(Store(data.store))
    written = skipped = images = 0
    began = time.perf_counter()
    for dataset in config["datasets"]:
        entry = manifest[dataset]
        for split in [s for s in config["splits"] if s in entry["splits"]]:
            for j, shard in enumerate(entry["splits"][split]["shards"]):
                if j % world != rank:
                    continue
                url = part_url(config["out"], dataset, split, shard)
                fs, path = filesystem(url)
                if fs.exists(path):
                    skipped += 1
                    continue
                one = {**entry, "splits": {split: {"shards": [shard], "num_samples": shard["num_samples"]}}}
                result = infer(model, one, split, data_config=data, rank=0, world=1, batch_size=config["batch_size"],
                               device=workers.device(config["use_gpu"]), features=True, view=config["view"])
                write_atomic(url, table_bytes(result, dataset=dataset, split=split, labels=entry["labels"],
                                              source=config["checkpoint"]))
                written += 1
                images += len(result["ids"])
    # This worker's pace (without Ray's and the model's start-up): `bench embed` compares it.
    workers.report(config, {"written": written, "skipped": skipped, "images": images,
                            "seconds": time.perf_counter() - began})


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="launch.py embed", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="run folder, checkpoint or ark-dist export (.safetensors), "
                   "or a published Ark .pth.tar (with --recipe)")
    p.add_argument("--datasets", nargs="+", required=True)
    p.add_argument("--splits", nargs="+", default=list(SPLITS), choices=SPLITS)
    workers.add_pass_arguments(p, out="out/embeddings", view="centre", batch_size=64, load="crop")
    return p


def run(args: argparse.Namespace) -> list[dict]:
    """Check the inputs in this process, then embed on the workers; each rank's counts and pace."""
    from ark_dist.data import Store, StoreConfig, read_manifest

    _, published = workers.weights([args.checkpoint], args)
    manifest = read_manifest(Store(StoreConfig(url=args.store)))
    unknown = [d for d in args.datasets if d not in manifest]
    if unknown:
        raise ValueError(f"--datasets: {unknown[0]!r} is not in {args.store} (has: {', '.join(sorted(manifest))})")
    config = workers.pass_config(args, args.datasets, checkpoint=args.checkpoint, datasets=args.datasets,
                                 splits=args.splits, published=published)
    return workers.run_pass(loop, config, args, name="embed")


def main(argv: list[str]) -> int:
    from ark_dist.data import ShardReadError

    args = parser().parse_args(argv)
    try:
        metrics = run(args)
    except (ValueError, ShardReadError) as exc:
        return workers.fail(str(exc))
    written, skipped = sum(m["written"] for m in metrics), sum(m["skipped"] for m in metrics)
    print(f"embeddings of {', '.join(args.datasets)} ({', '.join(args.splits)}) under {args.out}: "
          f"{written} shards written, {skipped} already there")
    return 0

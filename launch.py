"""ark-dist's one entry point.

    python launch.py demo [--out DIR]         the whole path on synthetic data, on this machine (`make demo`)
    python launch.py train --config FILE [key=value ...] [--dry-run]   Ark on Ray Train + DeepSpeed
    python launch.py tune --config FILE [key=value ...]               a Ray Tune sweep (the `tune` section)
    python launch.py report RUN [--out DIR]  plots and a summary table from a run folder's metrics
    python launch.py slurm --config FILE [key=value ...] [--submit]   fill in (and submit) the Slurm batch script
    python launch.py k8s render --config FILE [...]   KubeRay RayJob/RayCluster manifests for a recipe and a size
    python launch.py export --checkpoint PATH_OR_URL --out FILE [--student]   weights for timm / Ark
    python launch.py release --checkpoint RUN --out DIR [--student]   a model folder timm loads (local-dir:/hf-hub:)
    python launch.py predict --model DIR FILE... [--json]   a released model's probabilities for image files
    python launch.py explain --model DIR --image FILE --target dataset:class | --all   a Grad-CAM heatmap
    python launch.py finetune --config FILE [key=value ...]   transfer to one dataset (BenchmarkTransformers)
    python launch.py zeroshot --checkpoint X --target DATASET --map FILE [...]   an unseen set scored by the heads
    python launch.py embed --checkpoint X --datasets ... [...]   backbone and projector features as Parquet
    python launch.py probe --embeddings URL --target DATASET [...]   linear probes, few-shot, selected on val
    python launch.py evaluate --checkpoint X --datasets ... [--before Y]   AUCs by the model's own heads (forgetting)
    python launch.py config [--reference | --show FILE [key=value ...]]   the config reference / a resolved recipe
    python launch.py shards <command> ...     data: inspect | build | verify | ls | synth | sources
    python launch.py bench shards [...]       build throughput and stored-vs-original decode cost
    python launch.py bench data [...]         loader throughput against decode, reference, S3 and cache
    python launch.py bench step [...]         the Ark step on Ray + DeepSpeed against a plain AMP loop
    python launch.py bench embed [...]        `embed` per worker against a plain no_grad loop
    python launch.py bench predict [...]      `predict` from files against a plain timm forward
    python launch.py bench memory [...]       the largest micro-batch per GPU: ZeRO 0/2, with and without checkpointing
    python launch.py bench loc [...]          Foundation X's box heads: FCOS against Deformable DETR, mAP and step time
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "train":
        from ark_dist.train.cli import main as train_main

        return train_main(rest)
    if command == "demo":
        from ark_dist.demo import main as demo_main

        return demo_main(rest)
    if command == "tune":
        from ark_dist.tune.cli import main as tune_main

        return tune_main(rest)
    if command == "slurm":
        from ark_dist.cluster.slurm import main as slurm_main

        return slurm_main(rest)
    if command == "k8s":
        from ark_dist.cluster.k8s import main as k8s_main

        return k8s_main(rest)
    if command == "report":
        from ark_dist.report import main as report_main

        return report_main(rest)
    if command == "config":
        from ark_dist.configdoc import main as config_main

        return config_main(rest)
    if command == "explain":
        from ark_dist.explain import main as explain_main

        return explain_main(rest)
    if command == "predict":
        from ark_dist.predict import main as predict_main

        return predict_main(rest)
    if command == "release":
        from ark_dist.release import main as release_main

        return release_main(rest)
    if command == "export":
        from ark_dist.export import main as export_main

        return export_main(rest)
    if command in ("finetune", "zeroshot", "embed", "probe", "evaluate"):
        import importlib

        return importlib.import_module(f"ark_dist.reuse.{command}").main(rest)
    if command == "shards":
        from shards.cli import main as shards_main

        return shards_main(rest)
    if command == "bench" and rest[:1] == ["shards"]:
        from shards.bench import main as bench_main

        return bench_main(rest[1:])
    if command == "bench" and rest[:1] == ["data"]:
        from ark_dist.data.bench import main as bench_data

        return bench_data(rest[1:])
    if command == "bench" and rest[:1] == ["embed"]:
        from ark_dist.reuse.bench import main as bench_embed

        return bench_embed(rest[1:])
    if command == "bench" and rest[:1] == ["predict"]:
        from ark_dist.bench_predict import main as bench_predict

        return bench_predict(rest[1:])
    if command == "bench" and rest[:1] == ["memory"]:
        from ark_dist.train.bench_memory import main as bench_memory

        return bench_memory(rest[1:])
    if command == "bench" and rest[:1] == ["loc"]:
        from ark_dist.model.bench_loc import main as bench_loc

        return bench_loc(rest[1:])
    if command == "bench" and rest[:1] == ["step"]:
        from ark_dist.train.bench import main as bench_step

        return bench_step(rest[1:])
    print(f"error: unknown command {' '.join(argv[:2])!r}; see `python launch.py --help`", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

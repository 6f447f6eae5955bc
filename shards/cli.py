"""`python -m shards <command>` (also `python launch.py shards <command>`)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from shards.errors import ShardsError


def _holdout(args) -> dict | None:
    pairs = {k: v for k, v in (("val", args.val_fraction), ("test", args.test_fraction)) if v is not None}
    if not pairs:
        return None
    from shards.sources import get_source

    merged = {**get_source(args.source).holdout, **pairs}
    bad = {k: v for k, v in merged.items() if not 0 <= v < 1}
    if bad or sum(merged.values()) >= 1:
        raise ShardsError(f"hold-out fractions {merged} must each be in [0, 1) and sum to less than 1")
    return merged


def _split_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=int, default=0, help="seed of the held-out splits and of the sample order")
    p.add_argument("--val-fraction", type=float, help="share of the train pool held out as val (source default)")
    p.add_argument("--test-fraction", type=float, help="share held out as test where the source has no official test")


def cmd_sources(args) -> int:
    from shards.sources import get_source, source_names

    for name in source_names():
        source = get_source(name)
        print(f"{name:16s} {source.task:10s} {source.layout}")
    return 0


def cmd_inspect(args) -> int:
    from shards.catalog import inspect
    from shards.sources import get_source

    report, notes = inspect(get_source(args.source), Path(args.root), seed=args.seed, holdout=_holdout(args))
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"{report['source']} at {args.root}")
    for split, info in report["splits"].items():
        print(f"  {split}: {info['num_images']} images, {info['num_missing_images']} missing")
        print(f"    {'class':32s} {'pos':>8s} {'neg':>8s} {'unc':>8s} {'missing':>8s}")
        for name, c in info["classes"].items():
            print(f"    {name:32s} {c['positive']:8d} {c['negative']:8d} {c['uncertain']:8d} {c['missing']:8d}")
        if info["boxes"]:
            print(f"    {'boxes':32s} " + ", ".join(f"{k} {v}" for k, v in info["boxes"].items()))
        for name, m in info["masks"].items():
            print(f"    {'mask ' + name:32s} {m['images']} images, {m['pixels']} pixels")
    return 0


def cmd_build(args) -> int:
    from shards.build import BuildOptions, build
    from shards.images import EncodeOptions
    from shards.sources import get_source
    from shards.store import Store

    if args.max_side < 16 or not 1 <= args.quality <= 100:
        raise ShardsError("--max-side must be at least 16 and --quality within 1..100")
    for flag, value in (("--workers", args.workers), ("--limit", args.limit), ("--samples-per-shard", args.samples_per_shard)):
        if value is not None and value < (0 if flag == "--workers" else 1):
            raise ShardsError(f"{flag} {value} is out of range")
    source = get_source(args.source)
    options = BuildOptions(
        encode=EncodeOptions(max_side=args.max_side, format=args.format, quality=args.quality),
        workers=args.workers or 0, limit=args.limit, seed=args.seed, shard_mb=args.shard_mb,
        samples_per_shard=args.samples_per_shard, max_bad=args.max_bad, holdout=_holdout(args),
        split_file=args.splits, classes=[c.strip() for c in args.classes.split(",")] if args.classes else None,
        progress=not args.quiet,
    )
    build(source, Path(args.root), Store(args.out, endpoint_url=args.endpoint_url), options,
          log=lambda line: print(line, file=sys.stderr))
    return 0


def cmd_verify(args) -> int:
    from shards.store import Store
    from shards.verify import verify

    bad = verify(Store(args.store, endpoint_url=args.endpoint_url), workers=args.workers)
    return 1 if bad else 0


def cmd_ls(args) -> int:
    from shards.store import Store
    from shards.verify import table

    print(table(Store(args.store, endpoint_url=args.endpoint_url)))
    return 0


def cmd_overlap(args) -> int:
    from shards import overlap
    from shards.store import Store

    if args.max_distance < 0:
        raise ShardsError("--max-distance must not be negative")
    samples = overlap.collect(Store(args.store, endpoint_url=args.endpoint_url), args.datasets, workers=args.workers)
    found = overlap.matches(samples, max_distance=args.max_distance)
    excluded = overlap.exclusions(found)
    out = Store(args.out, endpoint_url=args.endpoint_url)
    table = overlap.table(found)
    out.write_bytes("overlap.md", (table + "\n").encode())
    out.write_bytes("pairs.csv", overlap.pairs_csv(found).encode())
    out.write_bytes("exclude.txt", "".join(key + "\n" for key in excluded).encode())
    print(table)
    print(f"{len(found)} matching pairs among {len(samples)} samples; {len(excluded)} train samples to exclude "
          f"(data.exclude={out.describe('exclude.txt')})")
    for name in ("overlap.md", "pairs.csv", "exclude.txt"):
        print(f"wrote {out.describe(name)}")
    return 0


def cmd_synth(args) -> int:
    from shards.sources import get_source
    from shards.synth import synthesize_all

    if args.per_source < 4 or args.scale <= 0:
        raise ShardsError("--per-source must be at least 4 and --scale positive")
    for name in args.sources or []:
        get_source(name)
    roots = synthesize_all(Path(args.out), num_images=args.per_source, seed=args.seed, scale=args.scale,
                           sources=args.sources)
    for name, root in roots.items():
        print(f"{name:16s} {root}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="shards", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    sub.add_parser("sources", help="list the sources and their native layouts").set_defaults(func=cmd_sources)

    q = sub.add_parser("inspect", help="report a source's label facts without writing anything")
    q.add_argument("--source", required=True)
    q.add_argument("--root", required=True, help="the dataset's folder, as downloaded")
    q.add_argument("--json", action="store_true", help="print one JSON object")
    _split_options(q)
    q.set_defaults(func=cmd_inspect)

    b = sub.add_parser("build", help="write a source's shards and manifest entry into a store")
    b.add_argument("--source", required=True)
    b.add_argument("--root", required=True, help="the dataset's folder, as downloaded")
    b.add_argument("--out", required=True, help="store: a local folder or s3://bucket/prefix")
    b.add_argument("--max-side", type=int, default=512, help="longer side of stored images (default 512)")
    b.add_argument("--format", choices=["jpeg", "png"], default="jpeg", help="stored encoding (default jpeg)")
    b.add_argument("--quality", type=int, default=95, help="JPEG quality (default 95)")
    b.add_argument("--workers", type=int, help="processes (default: every core)")
    b.add_argument("--limit", type=int, help="at most N images per split (a trial build)")
    b.add_argument("--shard-mb", type=float, default=256.0, help="target shard size in MiB (default 256)")
    b.add_argument("--samples-per-shard", type=int, help="fixed samples per shard (overrides --shard-mb)")
    b.add_argument("--max-bad", default="1%", help="unreadable images tolerated: count or fraction (default 1%%)")
    b.add_argument("--splits", help="a splits.csv from an earlier build: reproduce its splits exactly")
    b.add_argument("--classes", help="comma-separated head classes (default: the source's)")
    b.add_argument("--endpoint-url", help="S3 endpoint (default: AWS_ENDPOINT_URL)")
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    _split_options(b)
    b.set_defaults(func=cmd_build)

    v = sub.add_parser("verify", help="re-read every shard: sha256, sample counts, every sample decodes")
    v.add_argument("--store", required=True)
    v.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    v.add_argument("--endpoint-url")
    v.set_defaults(func=cmd_verify)

    ls = sub.add_parser("ls", help="a table of datasets, splits, sample counts and sizes")
    ls.add_argument("--store", required=True)
    ls.add_argument("--endpoint-url")
    ls.set_defaults(func=cmd_ls)

    o = sub.add_parser("overlap", help="samples shared between datasets and splits (by origin and perceptual hash)")
    o.add_argument("--store", required=True)
    o.add_argument("--datasets", nargs="*", help="only these datasets (default: all)")
    o.add_argument("--max-distance", type=int, default=32,
                   help="largest Hamming distance of two 256-bit hashes that match (default 32)")
    o.add_argument("--out", default="overlap", help="folder (or s3:// prefix) for overlap.md, pairs.csv, exclude.txt")
    o.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    o.add_argument("--endpoint-url")
    o.set_defaults(func=cmd_overlap)

    s = sub.add_parser("synth", help="write small look-alike raw datasets in every source's native layout")
    s.add_argument("--out", required=True)
    s.add_argument("--per-source", type=int, default=24, help="images per source (default 24)")
    s.add_argument("--scale", type=float, default=1.0, help="image size relative to the real sets (default 1)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--sources", nargs="*", help="only these sources")
    s.set_defaults(func=cmd_synth)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except ShardsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `shards inspect ... | head`
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("interrupted: complete shards are kept; re-run the same command to resume", file=sys.stderr)
        return 130

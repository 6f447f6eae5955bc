"""`python launch.py bench shards`: what converting costs and what it saves.

On synthetic full-size originals of seven kinds (PNG 8/16-bit, JPEG, DICOM, NODE21's MetaImage,
PadChest's 16-bit PNG, a SIIM-ACR DICOM with its RLE mask) it measures, side by side: decoding an
original (one core, full decode to 8-bit gray, no JPEG draft), converting it the build's way
(read + decode + resize + encode + hash [+ masks], `shards.build._convert_one`) on 1..n worker
processes, and decoding the stored result. The stored/original decode ratio is the point of the shards (target: at least 10x). Last,
an end-to-end `shards build` of a synthetic ChestX-ray14 per worker count.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from shards import synth
from shards.build import BuildOptions, _convert_one, build
from shards.errors import ShardsError
from shards.images import EncodeOptions, decode_original, decode_stored
from shards.sources import get_source
from shards.store import Store

TARGET_RATIO = 10.0
DISTINCT = 4  # freshly drawn originals per kind; the rest are file copies (generation is slow, decode is not)
# kind -> (file suffix, (width, height), writer(path, pixels in [0, 1], seed))
KINDS = {
    "png16_2048": (".png", (2048, 2048), lambda p, px, s: synth.write_png16(p, px, bits=12)),
    "png8_1024": (".png", (1024, 1024), lambda p, px, s: synth.write_png8(p, px)),
    "jpeg_2544x3056": (".jpg", (2544, 3056), lambda p, px, s: synth.write_jpeg(p, px)),
    "dicom16_2500x3000": (".dcm", (2500, 3000), lambda p, px, s: synth.write_dicom(p, px, uid_seed=s, bits=12)),
    # NODE21's MetaImage (zlib-compressed 16-bit), PadChest's full-range 16-bit PNG, and SIIM-ACR's
    # 1024 px 8-bit DICOM with its pneumothorax mask rasterised from an RLE and stored beside it.
    "mha16_1024": (".mha", (1024, 1024), lambda p, px, s: synth.write_mha(p, px, bits=16)),
    "png16_padchest_2500x2800": (".png", (2500, 2800), lambda p, px, s: synth.write_png16(p, px, bits=16)),
    "dicom8_mask_1024": (".dcm", (1024, 1024), lambda p, px, s: synth.write_dicom(p, px, uid_seed=s, bits=8)),
}
MASKED = {"dicom8_mask_1024"}  # kinds converted with a mask, as a SIIM-ACR sample is


def mask_tasks(kind: str, size: tuple[int, int]) -> list[tuple[int, str, dict]]:
    """The build's mask tasks for one image of `kind`: a disc as a relative column-major RLE."""
    if kind not in MASKED:
        return []
    width, height = size
    yy, xx = np.mgrid[0:height, 0:width]
    disc = ((xx - width * 0.6) ** 2 + (yy - height * 0.4) ** 2) < (0.12 * width) ** 2
    flat = np.concatenate([[0], disc.T.reshape(-1).astype(np.int8), [0]])
    edges = np.flatnonzero(np.diff(flat))
    starts, ends = edges[0::2], edges[1::2]
    gaps = starts - np.concatenate([[0], ends[:-1]])
    code = " ".join(f"{g} {n}" for g, n in zip(gaps, ends - starts))
    return [(0, "Pneumothorax", {"rle": [code], "encoding": "relative"})]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    cores = os.cpu_count() or 1
    p = argparse.ArgumentParser(prog="launch.py bench shards", description=__doc__.splitlines()[0])
    p.add_argument("--num-images", type=int, default=24, help="originals per kind, and images in the build (24)")
    p.add_argument("--workers", default=f"1,{cores}", help=f"comma list of worker counts (1,{cores})")
    p.add_argument("--build-images", type=int, help="images in the end-to-end build (default --num-images); "
                   "use hundreds on many cores, or pool start-up dominates")
    p.add_argument("--max-side", type=int, default=512)
    p.add_argument("--format", choices=("jpeg", "png"), default="jpeg")
    p.add_argument("--quality", type=int, default=95)
    p.add_argument("--repeats", type=int, default=5, help="decode passes; the median is reported (5)")
    p.add_argument("--keep", metavar="DIR", help="generate originals here (re-used if present) and keep them")
    p.add_argument("--json", metavar="FILE", help="also write every figure to this JSON file")
    args = p.parse_args(argv)
    try:
        args.workers = sorted({int(w) for w in args.workers.split(",") if w.strip()})
    except ValueError:
        p.error(f"--workers {args.workers!r}: expected a comma list of integers such as 1,4")
    if not args.workers or args.workers[0] < 1:
        p.error("--workers: every count must be at least 1")
    if args.num_images < 1 or args.repeats < 1 or args.max_side < 16 or not 1 <= args.quality <= 100:
        p.error("--num-images and --repeats must be >= 1, --max-side >= 16, --quality within 1..100")
    return args


def make_originals(folder: Path, *, num_images: int) -> dict[str, list[Path]]:
    """N files per kind under `folder/<kind>/`; existing files are re-used (for `--keep`)."""
    rng = np.random.default_rng(0)
    found = {}
    for kind, (suffix, (width, height), write) in KINDS.items():
        paths = [folder / kind / f"{i:05d}{suffix}" for i in range(num_images)]
        for i, path in enumerate(paths):
            if path.exists():
                continue
            if i < DISTINCT:
                write(path, synth.radiograph(rng, width, height), f"bench-{kind}-{i}")
            else:
                shutil.copyfile(paths[i % DISTINCT], path)
        found[kind] = paths
    return found


def rate(count: int, seconds: float) -> float:
    return count / max(seconds, 1e-9)


def median_rate(func, items: list, *, repeats: int) -> float:
    """Images/s of `func` over all `items`, median of `repeats` passes, after one warm-up call."""
    func(items[0])
    passes = []
    for _ in range(repeats):
        start = time.perf_counter()
        for item in items:
            func(item)
        passes.append(time.perf_counter() - start)
    return rate(len(items), statistics.median(passes))


def convert_rate(paths: list[Path], *, options: EncodeOptions, workers: int,
                 masks: list | None = None) -> tuple[float, list[bytes]]:
    """Images/s of the build's per-image worker (`_convert_one`: read, decode, resize, encode,
    perceptual hash, and any masks rasterised and encoded) on `workers` processes, pool started
    and warmed before the clock; also the stored bytes."""
    tasks = [(str(p), options, masks or [], str(p.parent)) for p in paths]
    if workers <= 1:
        _convert_one(tasks[0])
        start = time.perf_counter()
        results = list(map(_convert_one, tasks))
        elapsed = time.perf_counter() - start
    else:
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            pool.map(_convert_one, tasks[:1] * workers, chunksize=1)  # start and import in every worker
            start = time.perf_counter()
            # chunksize 1, not the build's 4: a bench-sized N would otherwise leave workers idle
            results = list(pool.imap(_convert_one, tasks, chunksize=1))
            elapsed = time.perf_counter() - start
    bad = [r for r in results if r[0] != "ok"]
    if bad:
        raise ShardsError(f"conversion failed: {bad[0][1]}")
    return rate(len(tasks), elapsed), [r[1] for r in results]


def bench_kind(paths: list[Path], *, options: EncodeOptions, workers: list[int], repeats: int,
               masks: list | None = None) -> dict:
    """Original decode, conversion per worker count, stored decode, and their ratio for one kind."""
    originals = [(p.read_bytes(), p.name) for p in paths]
    original_rate = median_rate(lambda item: decode_original(item[0], name=item[1], draft_to=None),
                                originals, repeats=repeats)
    convert, stored = {}, []
    for w in workers:
        ips, outputs = convert_rate(paths, options=options, workers=w, masks=masks)
        stored = stored or outputs
        convert[w] = {"images_per_s": ips, "images_per_s_per_worker": ips / w}
    stored_rate = median_rate(decode_stored, stored, repeats=repeats)
    ratio = stored_rate / original_rate
    return {
        "num_images": len(paths),
        "original_mib_per_image": sum(len(d) for d, _ in originals) / len(originals) / 2**20,
        "stored_kib_per_image": sum(len(d) for d in stored) / len(stored) / 2**10,
        "original_decode_images_per_s": original_rate,
        "convert": add_scaling(convert),
        "stored_decode_images_per_s": stored_rate,
        "stored_over_original_decode": ratio,
        "meets_target": ratio >= TARGET_RATIO,
    }


def add_scaling(by_workers: dict[int, dict]) -> dict[int, dict]:
    """scaling = rate(w) / rate(1); None when 1 worker was not measured."""
    one = by_workers.get(1, {}).get("images_per_s")
    for figures in by_workers.values():
        figures["scaling"] = figures["images_per_s"] / one if one else None
    return by_workers


def bench_build(folder: Path, *, num_images: int, encode: EncodeOptions, workers: list[int]) -> dict:
    """End-to-end `shards build` of a synthetic ChestX-ray14 (1024 px 8-bit PNGs), fresh store each time."""
    source = get_source("chestxray14")
    root = folder / "chestxray14"
    source.synthesize(root, num_images=num_images, seed=0, scale=1.0)

    def run(w: int, store_dir: Path) -> tuple[float, int]:
        options = BuildOptions(encode=encode, workers=w, progress=False, max_bad="0")
        start = time.perf_counter()
        with contextlib.redirect_stderr(io.StringIO()):  # build reports each shard written on stderr
            entry = build(source, root, Store(str(store_dir)), options, log=lambda *_: None)
        return time.perf_counter() - start, sum(s["num_samples"] for s in entry["splits"].values())

    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-store-") as stores:
        run(1, Path(stores, "warmup"))
        for w in workers:
            seconds, count = run(w, Path(stores, f"w{w}"))
            results[w] = {"seconds": seconds, "images": count, "images_per_s": rate(count, seconds),
                          "images_per_s_per_worker": rate(count, seconds) / w}
    return add_scaling(results)


def _scaling(value: float | None) -> str:
    return f"{value:7.2f}x" if value is not None else "       -"


def print_report(report: dict) -> None:
    """The figures as three readable tables."""
    print(f"\n{'kind':24s} {'orig MiB':>8s} {'orig dec/s':>10s} {'stored KiB':>10s} {'stored dec/s':>12s} "
          f"{'ratio':>8s}  vs {TARGET_RATIO:.0f}x")
    for kind, k in report["kinds"].items():
        verdict = "ok" if k["meets_target"] else f"BELOW {TARGET_RATIO:.0f}x"
        print(f"{kind:24s} {k['original_mib_per_image']:8.2f} {k['original_decode_images_per_s']:10.1f} "
              f"{k['stored_kib_per_image']:10.1f} {k['stored_decode_images_per_s']:12.1f} "
              f"{k['stored_over_original_decode']:7.1f}x  {verdict}")
    print(f"\nconversion (read + decode + resize + encode + hash [+ mask]), one pass of {report['options']['num_images']} images")
    print(f"{'kind':24s} {'workers':>7s} {'img/s':>9s} {'img/s/worker':>12s} {'scaling':>8s}")
    for kind, k in report["kinds"].items():
        for w, c in k["convert"].items():
            print(f"{kind:24s} {w:7d} {c['images_per_s']:9.1f} {c['images_per_s_per_worker']:12.1f} "
                  f"{_scaling(c['scaling'])}")
    print("\nend-to-end `shards build` of synthetic chestxray14 (1024 px 8-bit PNG)")
    print(f"{'workers':>7s} {'images':>7s} {'seconds':>8s} {'img/s':>9s} {'img/s/worker':>12s} {'scaling':>8s}")
    for w, b in report["build"].items():
        print(f"{w:7d} {b['images']:7d} {b['seconds']:8.2f} {b['images_per_s']:9.1f} "
              f"{b['images_per_s_per_worker']:12.1f} {_scaling(b['scaling'])}")


def main(argv: list[str] | None) -> int:
    args = parse_args(argv)
    try:
        return run_bench(args)
    except ShardsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def run_bench(args: argparse.Namespace) -> int:
    """Generate, measure, print (and optionally write JSON); returns the exit status."""
    encode = EncodeOptions(max_side=args.max_side, format=args.format, quality=args.quality)
    options = {"num_images": args.num_images, "workers": args.workers, "max_side": args.max_side,
               "format": args.format, "quality": args.quality, "repeats": args.repeats}
    cores = os.cpu_count()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    print(f"bench shards: {cores} cores ({usable} usable); "
          + " ".join(f"{k}={','.join(map(str, v)) if isinstance(v, list) else v}" for k, v in options.items()))
    with tempfile.TemporaryDirectory(prefix="bench-shards-") as tmp:
        folder = Path(args.keep) if args.keep else Path(tmp)
        started = time.perf_counter()
        originals = make_originals(folder, num_images=args.num_images)
        print(f"originals in {folder} ({min(DISTINCT, args.num_images)} distinct per kind, the rest copies), "
              f"ready in {time.perf_counter() - started:.1f} s")
        kinds = {kind: bench_kind(paths, options=encode, workers=args.workers, repeats=args.repeats,
                                  masks=mask_tasks(kind, KINDS[kind][1]))
                 for kind, paths in originals.items()}
        built = bench_build(Path(tmp), num_images=args.build_images or args.num_images, encode=encode,
                            workers=args.workers)
    report = {"cores": cores, "usable_cores": usable, "options": options, "target_ratio": TARGET_RATIO,
              "kinds": kinds, "build": built}
    print_report(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")  # int worker keys become strings
        print(f"\nwrote {args.json}")
    return 0

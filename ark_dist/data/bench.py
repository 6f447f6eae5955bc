"""`python launch.py bench data`: what the data plane delivers, side by side in one run.

  decode        pure decode of the stored images (one core): the ceiling of this design; and their
                decode onto each --load-sizes canvas (what the loader does)
  pipeline      the loader (decode + policy + view draws + batch) in one process, then N processes,
                for each canvas side in --load-sizes (e.g. 256,512: the cost of a larger canvas)
  + views       the same with both views rendered on this machine's CPU (on a GPU they are ~free)
  decode        (with --decode loader,device) the rank's whole intake, JPEG decode in the loader
  on the device processes against on the rank's --device (data.decode), with both views rendered there:
                img/s and CPU-seconds per image (the process and its loader processes together)
  reference     the reference code's style: a torch Dataset opening full-size original PNGs with
                PIL and augmenting both views with torchvision transforms, same processes
  s3 / cache    (with --s3) the pipeline streaming from a local S3 server, and from a cold and a
                warm node cache, against the local folder

Without --store it builds a synthetic ChestX-ray14 (1024 px 8-bit PNG originals) and uses those
originals for the reference too. Figures are medians over --repeats.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from PIL import Image

from ark_dist.data import Cursor, DataConfig, Store, StoreConfig, canvases, read_manifest, render
from ark_dist.data.stages import decode_image
from ark_dist.data.stream import TrainStream, make_loader
from ark_dist.data.config import ViewConfig


def _args(argv):
    p = argparse.ArgumentParser(prog="launch.py bench data", description=__doc__.splitlines()[0])
    p.add_argument("--store", help="a shard store (default: build a synthetic one)")
    p.add_argument("--dataset", default="chestxray14")
    p.add_argument("--images", type=int, default=96, help="synthetic originals to build (default 96)")
    p.add_argument("--workers", default=f"0,1,{os.cpu_count()}",
                   help="loader process counts; 0 = in the main process, the cost of one worker without IPC "
                        "(default 0,1,<cores>)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--batches", type=int, default=40, help="batches timed per measurement")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--load-sizes", default=str(ViewConfig().load_size),
                   help="canvas sides (data.views.load_size) to measure side by side, e.g. 256,512 "
                        f"(default {ViewConfig().load_size})")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--decode", default="", help="data.decode modes to compare side by side, e.g. loader,device")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="the rank's device for --decode (default: cuda where there is one)")
    p.add_argument("--s3", action="store_true", help="also stream through a local S3 server (moto) and a cache")
    p.add_argument("--json", help="write the figures here too")
    args = p.parse_args(argv)
    args.workers = sorted({int(w) for w in args.workers.split(",")})
    args.load_sizes = [int(x) for x in dict.fromkeys(args.load_sizes.split(","))]
    args.decode = [m for m in dict.fromkeys(args.decode.split(",")) if m]
    if any(m not in ("loader", "device") for m in args.decode):
        p.error(f"--decode {','.join(args.decode)}: each mode is loader or device")
    return args


def _median_rate(func, count: int, repeats: int) -> float:
    return _median_rates({None: func}, count, repeats)[None]


def _median_rates(funcs: dict, count: int, repeats: int) -> dict:
    """Images/s of each function, timed in turns (one repeat of each, then the next), so a machine
    whose load drifts during the run weighs on all of them alike."""
    times = {name: [] for name in funcs}
    for _ in range(repeats):
        for name, func in funcs.items():
            start = time.perf_counter()
            func()
            times[name].append(time.perf_counter() - start)
    return {name: count / statistics.median(spent) for name, spent in times.items()}


def _synthetic_store(folder: Path, images: int) -> tuple[str, Path]:
    from shards.build import BuildOptions, build
    from shards.sources import get_source
    from shards.store import Store as ShardStore

    source = get_source("chestxray14")
    raw = folder / "raw"
    source.synthesize(raw, num_images=images, seed=0, scale=1.0)
    options = BuildOptions(workers=os.cpu_count() or 1, progress=False, max_bad="0")  # real shard sizing
    build(source, raw, ShardStore(str(folder / "store")), options, log=lambda *_: None)
    return str(folder / "store"), raw


def _stored_images(config: DataConfig, entry: dict) -> list[bytes]:
    from shards.samples import read_tar

    store = Store(config.store)
    images = []
    for shard in entry["splits"]["train"]["shards"]:
        with store.open_shard(shard["url"], size=shard["num_bytes"], sha256=shard["sha256"]) as f:
            images += [p.get("jpg", p.get("png")) for _, p in read_tar(f.read())]
    return images


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (a loader's processes, once joined)."""
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _intake_rates(config: DataConfig, entry: dict, args) -> dict:
    """{mode: {workers: {"img_per_s", "cpu_s_per_img"}}}: the rank's intake (loader, canvases on
    the device, both views rendered there) per `data.decode` mode, timed in turns."""
    device = torch.device(args.device)
    count = args.batches * args.batch
    out = {mode: {} for mode in args.decode}
    for w in args.workers:
        cpu = {mode: [] for mode in args.decode}
        runs = {mode: _loader_run(replace(config, decode=mode), entry, args, w, with_views=True, device=device,
                                  cpu_seconds=cpu[mode]) for mode in args.decode}
        for mode, rate in _median_rates(runs, count, args.repeats).items():
            out[mode][w] = {"img_per_s": rate, "cpu_s_per_img": statistics.median(cpu[mode]) / count}
    return out


def _loader_rate(config, entry, args, workers: int, *, with_views: bool) -> float:
    """Images/s of the train stream; `config` may be a function returning a fresh one per repeat."""
    return _median_rate(_loader_run(config, entry, args, workers, with_views=with_views), args.batches * args.batch,
                        args.repeats)


def _loader_run(config, entry, args, workers: int, *, with_views: bool, device: torch.device = torch.device("cpu"),
                cpu_seconds: list[float] | None = None):
    """One timed pass of the train stream: `args.batches` batches of `args.batch`; `with_views`:
    each batch's canvases (decoded there under `data.decode: device`) and both views rendered on
    `device`. `cpu_seconds` gets each pass's CPU time, loader processes included."""
    size = args.image_size

    def run():
        fresh = replace(config() if callable(config) else config, num_workers=workers)
        # A fixed number of batches (a real round's count comes from the manifest).
        stream = TrainStream(entry=entry, config=fresh, seed=0, cursor=Cursor(), rank=0, batch_size=args.batch,
                             num_batches=args.batches)
        before = _cpu_seconds()
        for batch in make_loader(stream, fresh):
            if with_views:
                images = canvases(batch, device)
                render(images, theta=batch["theta_student"].to(device), size=size, photo=batch["photo"].to(device))
                render(images, theta=batch["theta_teacher"].to(device), size=size)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if cpu_seconds is not None:
            cpu_seconds.append(_cpu_seconds() - before)

    return run


class ReferenceDataset(torch.utils.data.Dataset):
    """The reference code's loader: full-size PNG -> RGB PIL -> torchvision transforms, two views."""

    def __init__(self, paths: list[Path], size: int):
        from torchvision import transforms as T

        normalize = T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
        self.paths = paths
        self.augment = T.Compose([T.RandomResizedCrop(size), T.RandomAffine(10, translate=(0.0625, 0.0625),
                                                                           scale=(0.9, 1.1)),
                                  T.RandomApply([T.ColorJitter(0.2, 0.2)], p=0.3), T.ToTensor(), normalize])

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        image = Image.open(self.paths[i]).convert("RGB")
        return self.augment(image), self.augment(image), torch.zeros(14)


def _reference_rate(paths: list[Path], args, workers: int) -> float:
    count = args.batches * args.batch
    paths = (paths * (count // len(paths) + 1))[:count]
    dataset = ReferenceDataset(paths, args.image_size)

    def run():
        for _ in torch.utils.data.DataLoader(dataset, batch_size=args.batch, num_workers=workers, shuffle=True):
            pass

    return _median_rate(run, count, args.repeats)


def main(argv=None) -> int:
    args = _args(argv)
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # the S3 server would log every request
    torch.set_num_threads(1)  # one core per process, as in a loader worker
    with tempfile.TemporaryDirectory(prefix="bench-data-") as tmp:
        folder = Path(tmp)
        url, raw = (args.store, None) if args.store else _synthetic_store(folder, args.images)
        configs = {size: DataConfig(store=StoreConfig(url=url), shuffle_buffer=256,
                                    views=ViewConfig(image_size=args.image_size, load_size=size))
                   for size in args.load_sizes}
        config = configs[args.load_sizes[0]]
        entry = read_manifest(Store(config.store))[args.dataset]
        images = _stored_images(config, entry)
        report = {"dataset": args.dataset, "store": url, "batch": args.batch, "cores": os.cpu_count(),
                  "stored_image": entry["image"]}
        report["decode_img_per_s"] = _median_rate(lambda: [Image.open(io.BytesIO(b)).load() for b in images],
                                                  len(images), args.repeats)
        report["canvas_decode_img_per_s"] = _median_rates(
            {size: (lambda size=size: [decode_image(b, size) for b in images]) for size in args.load_sizes},
            len(images), args.repeats)
        originals = sorted(raw.rglob("*.png")) if raw else _originals(folder, args.images)
        report["original_decode_img_per_s"] = _median_rate(
            lambda: [Image.open(p).load() for p in originals], len(originals), args.repeats)
        reference = {w: _reference_rate(originals, args, w) for w in args.workers}  # crops the originals: no canvas
        report["load_sizes"] = {size: {} for size in configs}
        for w in args.workers:  # the canvas sides in turns, repeat after repeat
            runs = {(size, views): _loader_run(sized, entry, args, w, with_views=views)
                    for size, sized in configs.items() for views in (False, True)}
            rates = _median_rates(runs, args.batches * args.batch, args.repeats)
            for size in configs:
                row = {"pipeline": rates[size, False], "pipeline_with_cpu_views": rates[size, True],
                       "reference": reference[w]}
                report["load_sizes"][size][w] = {**row, "per_core_vs_reference": row["pipeline"] / row["reference"]}
        report["workers"] = report["load_sizes"][args.load_sizes[0]]
        report["pipeline_share_of_decode"] = report["workers"][min(args.workers)]["pipeline"] / (
            report["decode_img_per_s"] * max(1, min(args.workers)))  # one process against one core's decode
        if args.decode:
            report["intake"] = {"device": args.device, "rates": _intake_rates(config, entry, args)}
        if args.s3:
            from ark_dist.data.bench_s3 import s3_rates

            report["s3"] = s3_rates(config, entry, folder, workers=max(args.workers), rate=lambda c: _loader_rate(
                c, entry, args, max(args.workers), with_views=False))
    _print(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


def _originals(folder: Path, count: int) -> list[Path]:
    from shards.sources import get_source

    get_source("chestxray14").synthesize(folder / "originals", num_images=count, seed=1, scale=1.0)
    return sorted((folder / "originals").rglob("*.png"))


def _print(r: dict) -> None:
    image = r["stored_image"]
    print(f"bench data: {r['dataset']} from {r['store']} ({image['format']} {image['max_side']} px), batch {r['batch']}, "
          f"{r['cores']} cores")
    print(f"  stored image decode (1 core)     {r['decode_img_per_s']:9.1f} img/s")
    print(f"  original PNG decode (1 core)     {r['original_decode_img_per_s']:9.1f} img/s")
    for size, rate in r["canvas_decode_img_per_s"].items():
        print(f"  decode onto a {size} px canvas    {rate:9.1f} img/s")
    print(f"\n  {'canvas':>6s} {'workers':>7s} {'pipeline':>10s} {'+cpu views':>11s} {'reference':>10s} {'vs ref':>8s}"
          f"   (img/s)")
    for size, rows in r["load_sizes"].items():
        for w, row in rows.items():
            print(f"  {size:6d} {w:7d} {row['pipeline']:10.1f} {row['pipeline_with_cpu_views']:11.1f} "
                  f"{row['reference']:10.1f} {row['per_core_vs_reference']:7.1f}x")
    first, *others = r["load_sizes"]
    for size in others:
        rows, base = r["load_sizes"][size], r["load_sizes"][first]
        ratios = ", ".join(f"{w} workers {rows[w]['pipeline'] / base[w]['pipeline']:.2f}" for w in rows)
        print(f"  pipeline at {size} px / at {first} px: {ratios}")
    print(f"\n  pipeline per worker / pure stored decode: {100 * r['pipeline_share_of_decode']:.0f}%  (target >= 70%)")
    if "intake" in r:
        rates = r["intake"]["rates"]
        print(f"\n  the rank's intake, views rendered on {r['intake']['device']} (data.decode)")
        print(f"  {'decode':>7s} {'workers':>7s} {'img/s':>9s} {'CPU ms/img':>11s}")
        for mode, rows in rates.items():
            for w, row in rows.items():
                print(f"  {mode:>7s} {w:7d} {row['img_per_s']:9.1f} {1000 * row['cpu_s_per_img']:11.2f}")
        if len(rates) == 2:
            for w in rates["loader"]:
                a, b = rates["loader"][w], rates["device"][w]
                print(f"  device / loader, {w} workers: img/s {b['img_per_s'] / a['img_per_s']:.2f}, "
                      f"CPU per image {b['cpu_s_per_img'] / a['cpu_s_per_img']:.2f}")
    if "s3" in r:
        s3 = r["s3"]
        print(f"  {s3['workers']} workers: local {s3['local']:.1f}, s3 {s3['s3']:.1f} ({100 * s3['s3'] / s3['local']:.0f}%,"
              f" target >= 90%), cold cache {s3['cache_cold']:.1f}, warm cache {s3['cache_warm']:.1f} "
              f"({100 * s3['cache_warm'] / s3['local']:.0f}% of local, target >= 100%) img/s")

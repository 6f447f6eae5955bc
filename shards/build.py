"""`shards build`: a source's images -> 8-bit grayscale, resized, encoded -> WebDataset shards in a
store, then the dataset's manifest entry.

Crash safety, in order: every shard is written under a temporary name and renamed; after each
shard a small journal entry (`<dataset>/_build/`) records what it holds; the split file and then
the manifest are written (each atomically); only then are stale shards and the journal removed. A
re-run re-uses every planned shard whose plan matches and whose bytes still verify, so an
interrupted build resumes and ends with the same manifest as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import random
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm

from shards import __version__, catalog, masks, splits
from shards.errors import ShardsError
from shards.images import EncodeOptions, ImageError, convert_sample
from shards.labelfiles import sha256_file
from shards.manifest import Manifest, publish
from shards.samples import Record, encode_json, write_tar
from shards.sources import Source
from shards.store import TMP_MARK, Store

# Bytes per stored pixel, measured on CXRs (DESIGN 6: 512 px PNG 166 KiB, JPEG q95 103 KiB).
BYTES_PER_PIXEL = {"png": 0.65, "jpeg": 0.40}
SHARD_NAME = re.compile(r"^(train|val|test)-\d{6}\.tar$")


@dataclass(frozen=True)
class BuildOptions:
    """Everything `build` takes besides the source, its root and the store."""

    encode: EncodeOptions = field(default_factory=EncodeOptions)
    workers: int = 0  # 0 = every core
    limit: int | None = None  # at most this many images per split (a trial build)
    seed: int = 0  # hold-out splits and the sample order within shards
    shard_mb: float = 256.0  # target shard size; ignored when samples_per_shard is set
    samples_per_shard: int | None = None
    max_bad: str = "1%"  # unreadable images tolerated: a count ("10") or a fraction ("0.5%", "0.005")
    holdout: dict | None = None  # override the source's hold-out fractions, e.g. {"val": 0.1}
    split_file: str | None = None  # a split CSV from an earlier build: reproduce its splits
    classes: list[str] | None = None  # head classes; default: the source's (all, or Ark's subset)
    progress: bool = True


@dataclass
class PlannedShard:
    split: str
    url: str  # relative to the store
    records: list[Record]
    plan: str  # hash of everything that determines the shard's bytes


def available_cores() -> int:
    """Cores this process may run on (the container's or Slurm's share, not the host's)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def error_budget(max_bad: str, total: int) -> int:
    """How many bad images `--max-bad` allows out of `total`."""
    text = str(max_bad).strip()
    try:
        if text.endswith("%"):
            return int(float(text[:-1]) / 100 * total)
        value = float(text)
    except ValueError:
        raise ShardsError(f"--max-bad {max_bad!r}: expected a count (10) or a fraction (0.01 or 1%)") from None
    if value < 0:
        raise ShardsError(f"--max-bad {max_bad!r} must not be negative")
    return int(value * total) if value < 1 and "." in text else int(value)


def samples_per_shard(options: BuildOptions) -> int:
    if options.samples_per_shard:
        return options.samples_per_shard
    side = options.encode.max_side
    estimate = side * side * 0.85 * BYTES_PER_PIXEL[options.encode.format] + 1536  # + JSON and tar headers
    return max(1, int(options.shard_mb * 2**20 / estimate))


def _file_state(path: Path) -> int | None:
    """What a re-run compares to notice a repaired, replaced or vanished image without reading it:
    its size (not its mtime, so that a copied dataset still resumes and gives the same manifest)."""
    try:
        return path.stat().st_size
    except OSError:
        return None


def _plan(source: Source, scan, options: BuildOptions, root: Path) -> list[PlannedShard]:
    per_shard = samples_per_shard(options)
    base = {
        "tool": __version__, "source": source.name, "encode": asdict(options.encode),
        "label_files": [sha256_file(p) for p in scan.label_files],
    }
    planned = []
    for split in splits.SPLITS:
        records = sorted((r for r in scan.records if r.split == split), key=lambda r: r.id)
        random.Random(f"{options.seed}:{split}").shuffle(records)  # shards are pre-shuffled
        records = records[: options.limit] if options.limit else records
        for index, start in enumerate(range(0, len(records), per_shard)):
            chunk = records[start:start + per_shard]
            url = f"{source.name}/{split}-{index:06d}.tar"
            digest = hashlib.sha256(json.dumps({**base, "url": url, "ids": [r.id for r in chunk],
                                                "files": [_file_state(root / r.image) for r in chunk],
                                                "masks": [_mask_plan(r, root) for r in chunk],
                                                "facts": [r.facts(source.name, original_size=(), stored_size=())
                                                          for r in chunk]}, sort_keys=True).encode())
            planned.append(PlannedShard(split=split, url=url, records=chunk, plan=digest.hexdigest()))
    return planned


def _mask_plan(record: Record, root: Path):
    """What of a record's masks the label files do not pin: their specs, and the mask files' sizes."""
    if not record.masks:
        return None
    return {k: {**spec, "states": [_file_state(root / f) for f in spec.get("files", ())]}
            for k, spec in sorted(record.masks.items())}


def _mask_tasks(source: Source, record: Record) -> list[tuple[int, str, dict]]:
    """(index in the manifest's `masks`, class, spec) of each mask a record has."""
    out = []
    for name, spec in sorted((record.masks or {}).items()):
        if name not in source.mask_classes:
            raise ShardsError(f"{source.name}: record {record.id} has a mask of {name!r}, which is not one of the "
                              f"source's mask classes {source.mask_classes}")
        out.append((source.mask_classes.index(name), name, spec))
    return out


def _convert_one(task):
    """Worker: (absolute path, options, masks, root) -> ("ok", bytes, original size, stored size,
    perceptual hash, {member: mask PNG}) | ("bad", reason). Unreadable inputs are data problems and
    come back as "bad"; anything else is a bug and raises."""
    path, options, mask_tasks, root = task
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return "bad", "missing file"
    except OSError as exc:
        return "bad", f"unreadable file: {exc.strerror or exc}"
    try:
        image, original, size, phash = convert_sample(data, name=path, options=options)
    except ImageError as exc:
        return "bad", str(exc)
    members = {}
    for index, name, spec in mask_tasks:
        try:
            members[masks.member(index)] = masks.encode(masks.rasterize(spec, original, Path(root)), size)
        except masks.MaskError as exc:
            return "bad", f"mask {name!r}: {exc}"
    return "ok", image, original, size, phash, members


def _results(tasks, workers: int):
    if workers <= 1:
        yield from map(_convert_one, tasks)
        return
    # forkserver, not fork: the store's S3 client runs an event-loop thread that must not be forked;
    # the server preloads the image libraries once, so starting 16+ workers costs a fork each.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["shards.build"])
    chunk = max(1, min(8, len(tasks) // (workers * 8)))
    with context.Pool(workers) as pool:
        yield from pool.imap(_convert_one, tasks, chunksize=chunk)


def _journal_url(shard: PlannedShard) -> str:
    return f"{Path(shard.url).parent.as_posix()}/_build/{Path(shard.url).stem}.json"


def _reusable(store: Store, shard: PlannedShard, candidates: dict) -> dict | None:
    """The shard's earlier result (entry + skipped) if its plan matches and its bytes verify."""
    found = candidates.get(shard.url)
    if not found or found["shard"].get("plan") != shard.plan or not store.exists(shard.url):
        return None
    data = store.read_bytes(shard.url)
    entry = found["shard"]
    if len(data) != entry["num_bytes"] or hashlib.sha256(data).hexdigest() != entry["sha256"]:
        return None
    return found


def _candidates(store: Store, name: str, manifest: Manifest) -> dict:
    """Earlier results per shard URL: from the manifest entry, then the journal (newer) over it."""
    found = {}
    for split, info in manifest.datasets.get(name, {}).get("splits", {}).items():
        for shard in info["shards"]:
            found[shard["url"]] = {"shard": shard, "skipped": [s for s in info["skipped"] if s["shard"] == shard["url"]]}
    for entry in store.list(f"{name}/_build"):
        if TMP_MARK in entry:
            continue
        doc = json.loads(store.read_bytes(f"{name}/_build/{entry}"))
        found[doc["shard"]["url"]] = doc
    return found


def build(source: Source, root: Path, store: Store, options: BuildOptions, *, log=print) -> dict:
    """Build `source` from `root` into `store`; returns the dataset's manifest entry."""
    started = time.perf_counter()
    store.check_reachable()
    split_file = None
    if options.split_file:
        path = Path(options.split_file)
        if not path.is_file():
            raise ShardsError(f"split file not found: {path}")
        split_file = (path.read_bytes(), str(path))
    scan = catalog.load(source, root, seed=options.seed, holdout=options.holdout, split_file=split_file)
    heads = options.classes or scan.head_labels or source.head_labels or scan.classes
    unknown = [c for c in heads if c not in scan.classes]
    if unknown:
        raise ShardsError(f"{source.name}: unknown class {unknown[0]!r} (classes: {', '.join(scan.classes)})")
    for note in scan.notes:
        log(f"note: {source.name}: {note}")

    planned = _plan(source, scan, options, root)
    total = sum(len(s.records) for s in planned)
    if total == 0:
        raise ShardsError(f"{source.name}: no images listed under {root}")
    budget = error_budget(options.max_bad, total)
    removed = store.remove_temporaries(source.name) + store.remove_temporaries(f"{source.name}/_build")
    if removed:
        log(f"removed {removed} temporary files left by an interrupted build")
    candidates = _candidates(store, source.name, Manifest.load(store, missing_ok=True))
    results: dict[str, dict] = {}
    for shard in planned:
        earlier = _reusable(store, shard, candidates)
        if earlier:
            results[shard.url] = earlier
    bad = sum(len(r["skipped"]) for r in results.values())
    todo = [s for s in planned if s.url not in results]
    log(f"{source.name}: {total} images in {len(planned)} shards ({len(results)} already built), "
        f"{len(todo)} to build with {options.workers or available_cores()} workers")

    tasks = [(str(root / r.image), options.encode, _mask_tasks(source, r), str(root)) for s in todo for r in s.records]
    stream = _results(tasks, options.workers or available_cores())
    bar = tqdm(total=len(tasks), unit="img", desc=source.name, disable=not options.progress, file=sys.stderr,
               mininterval=0.5 if sys.stderr.isatty() else 15)
    try:
        for shard in todo:
            samples, skipped = [], []
            for record in shard.records:
                status, *out = next(stream)
                bar.update(1)
                if status == "bad":
                    skipped.append({"id": record.id, "image": record.image, "reason": out[0], "shard": shard.url})
                    bad += 1
                    if bad > budget:
                        raise ShardsError(
                            f"{source.name}: {bad} unreadable images exceed --max-bad {options.max_bad} "
                            f"({budget} allowed of {total}); latest: {root / record.image}: {out[0]}")
                    continue
                image, original, size, phash, members = out
                facts = {**record.facts(source.name, original_size=original, stored_size=size), "phash": phash}
                samples.append((f"{source.name}/{record.id}", options.encode.extension, image, encode_json(facts),
                                members))
            data = write_tar(samples)
            entry = {"url": shard.url, "num_samples": len(samples), "num_bytes": len(data),
                     "sha256": hashlib.sha256(data).hexdigest(), "plan": shard.plan}
            store.write_bytes(shard.url, data)
            done = {"shard": entry, "skipped": skipped}
            store.write_bytes(_journal_url(shard), json.dumps(done).encode())
            results[shard.url] = done
            bar.write(f"wrote {store.describe(shard.url)}: {len(samples)} samples, {len(data) / 2**20:.1f} MiB"
                      + (f", {len(skipped)} skipped" if skipped else ""), file=sys.stderr)
    finally:
        bar.close()
        stream.close()

    entry = _entry(source, scan, options, planned, results, heads, root)
    store.write_bytes(f"{source.name}/splits.csv", splits.to_csv(scan.records))
    publish(store, entry)  # safe beside builds of other datasets into the same store
    _remove_stale(store, source.name, keep={s.url for s in planned})
    elapsed = time.perf_counter() - started
    _summary(log, source.name, entry, elapsed, built=len(tasks), reused=len(planned) - len(todo))
    return entry


def _entry(source, scan, options: BuildOptions, planned, results, heads, root: Path) -> dict:
    entry_splits = {}
    for split in splits.SPLITS:
        mine = [results[s.url] for s in planned if s.split == split]
        if not mine:
            continue
        entry_splits[split] = {
            "num_samples": sum(r["shard"]["num_samples"] for r in mine),
            "num_bytes": sum(r["shard"]["num_bytes"] for r in mine),
            "shards": [r["shard"] for r in mine],
            "skipped": [s for r in mine for s in r["skipped"]],
        }
    enc = options.encode
    rule = (f"from {Path(options.split_file).name}" if options.split_file else
            f"official, plus patient-disjoint hold-out {options.holdout or source.holdout} of train, seed {options.seed}")
    return {
        "name": source.name,
        "task": source.task,
        "labels": list(heads),
        "all_labels": list(scan.classes),
        "masks": list(source.mask_classes),
        **({"boxes": list(source.box_classes)} if source.box_classes else {}),
        "image": {"format": enc.format, "quality": enc.quality if enc.format == "jpeg" else None,
                  "max_side": enc.max_side, "bit_depth": 8, "channels": 1},
        "splits": entry_splits,
        "provenance": {
            "source": source.name,
            "layout": source.layout,
            "label_files": [{"path": p.relative_to(root).as_posix(), "sha256": sha256_file(p)} for p in scan.label_files],
            "split_file": f"{source.name}/splits.csv",
            "split_rule": rule,
            "options": {"max_side": enc.max_side, "format": enc.format, "quality": enc.quality, "seed": options.seed,
                        "limit": options.limit, "samples_per_shard": samples_per_shard(options)},
            "notes": scan.notes,
            "tool": f"ark-dist shards {__version__}",
        },
    }


def _remove_stale(store: Store, name: str, *, keep: set[str]) -> None:
    for entry in store.list(name):
        if SHARD_NAME.match(entry) and f"{name}/{entry}" not in keep:
            store.delete(f"{name}/{entry}")
    store.delete(f"{name}/_build", recursive=True)


def _summary(log, name: str, entry: dict, elapsed: float, *, built: int, reused: int) -> None:
    log(f"{name}: done in {elapsed:.1f} s ({built / max(elapsed, 1e-9):.1f} img/s; {reused} shards reused)")
    for split, info in entry["splits"].items():
        log(f"  {split:5s} {info['num_samples']:8d} samples {len(info['shards']):5d} shards "
            f"{info['num_bytes'] / 2**20:9.1f} MiB  {len(info['skipped'])} skipped")
        for s in info["skipped"][:5]:
            log(f"        skipped {s['image']}: {s['reason']}")

"""The loader pipeline as small named stages; each is a generator over the previous one's output.

    shards (resampled | sequence) -> tar_samples -> (shuffle | share) -> number -> skip -> decode
        -> label -> views -> batched

`data.sampling: resampled` draws shards with replacement and shuffles the endless stream; `epoch`
reads the stream's own range of the round's pass over the shards (`sequence`, plan.py) and
shuffles exactly that range (`share`).

A sample is a dict that grows as it flows: `key`, `shard` (its URL), `position`, `parts` (raw bytes) after
`tar_samples`; `image` (1, L, L) uint8 (or, decoding on the device, `jpeg` bytes and `canvas` L),
`size` (w, h) and `facts` after `decode`; `target`/`mask` after `label`;
`theta_student`/`theta_teacher`/`photo` after `views`. A stream asked for dense
targets (`decode(..., dense=DenseSpec)`) also gets, after `decode`, `masks` (C, L, L) uint8 0/1 and
`mask_known` (C,) bool (C: the manifest's mask classes), `boxes` (N, 4) float32 xyxy in stored
pixels and `box_labels` (N,) int64; they stay in the stored image's frame until the device warps
them with the image (views.warp_boxes, views.warp_masks).
"""

from __future__ import annotations

import io
import itertools
import json
from collections.abc import Iterable, Iterator

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ark_dist.data.dense import DenseSpec, dense_targets
from ark_dist.data.device_decode import encoded, jpeg_size, pack
from ark_dist.data.errors import DataError
from ark_dist.data.labels import LabelPolicy
from ark_dist.data.remote import BadShard, Store
from ark_dist.data.views import draw_views
from shards.samples import safe_member, split_member


class Counters:
    """Per loader-process counts, shipped with every batch so the trainer can log them."""

    def __init__(self, dataset: str, *, max_bad_fraction: float, min_bad: int):
        self.dataset, self.max_bad_fraction, self.min_bad = dataset, max_bad_fraction, min_bad
        self.samples = self.skipped = self.bytes = self.shards = 0

    def bad(self, what: str, count: int = 1) -> None:
        """`count` samples lost (a shard that cannot be read loses all it had left); `what` names
        the last culprit in the error raised beyond the budget."""
        self.skipped += count
        allowed = max(self.min_bad, int(self.max_bad_fraction * (self.samples + self.skipped)))
        if self.skipped > allowed:
            raise DataError(f"{self.dataset}: {self.skipped} bad samples exceed the budget ({allowed} of "
                            f"{self.samples + self.skipped}, data.bad_sample_fraction/bad_sample_min); last: {what}")

    def snapshot(self) -> dict:
        return {"dataset": self.dataset, "samples": self.samples, "skipped": self.skipped, "bytes": self.bytes,
                "shards": self.shards}


def resampled(shards: list[dict], rng: np.random.Generator) -> Iterator[dict]:
    """Shards drawn with replacement, weighted by sample count (so every sample is equally likely)."""
    weights = np.array([max(s["num_samples"], 0) for s in shards], dtype=np.float64)
    weights /= weights.sum()
    while True:
        yield shards[rng.choice(len(shards), p=weights)]


def sequence(shards: list[dict], start: int) -> Iterator[dict]:
    """The shards laid end to end as one sequence of samples that repeats, from sample `start` on:
    the shard it falls in comes first with `first` set (its samples before that are read, not
    yielded), then every shard in order, and again. Endless: the caller stops pulling."""
    total = sum(s["num_samples"] for s in shards)
    if total <= 0:
        raise ValueError("no training samples in the shards")
    offset = start % total
    while True:
        for shard in shards:
            if offset >= shard["num_samples"]:
                offset -= shard["num_samples"]
                continue
            yield {**shard, "first": offset} if offset else shard
            offset = 0


class DamagedShard(Exception):
    """A tar that ends early, has a malformed header, or names a member outside its folder."""


def _octal(field: bytes) -> int:
    text = field.rstrip(b"\0 ").strip()
    if not text:
        return 0
    if field[0] & 0x80:  # GNU base-256 for huge sizes
        return int.from_bytes(field[1:], "big")
    try:
        return int(text, 8)
    except ValueError:
        raise DamagedShard(f"bad number field {field!r}") from None


def tar_members(handle) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of every regular file in a tar stream. Reads the 512-byte headers directly:
    `tarfile` costs more per member than decoding a small JPEG. Handles ustar, pax (`path`) and GNU
    long names; other member types are skipped. Nothing is ever extracted, but a name that could
    escape an extraction folder (`..`, absolute) marks a tampered shard: `DamagedShard`."""
    long_name = None
    while True:
        header = handle.read(512)
        if not header or header == b"\0" * 512:
            return
        if len(header) < 512:
            raise DamagedShard("truncated header")
        if sum(header[:148]) + 256 + sum(header[156:]) != _octal(header[148:156]):
            raise DamagedShard("bad header checksum")
        size, kind = _octal(header[124:136]), header[156:157]
        data = handle.read(size)
        if len(data) < size:
            raise DamagedShard("truncated member")
        handle.read((512 - size % 512) % 512)
        if kind in (b"x", b"L"):
            if kind == b"L":
                long_name = data.rstrip(b"\0").decode()
            else:
                for record in data.decode().split("\n"):
                    if " path=" in record:
                        long_name = record.split(" path=", 1)[1]
            continue
        if kind not in (b"0", b"\0"):
            long_name = None
            continue
        name = long_name
        if name is None:
            name = header[:100].rstrip(b"\0").decode()
            if header[257:262] == b"ustar" and header[345]:
                name = header[345:500].rstrip(b"\0").decode() + "/" + name
        long_name = None
        if not safe_member(name):
            raise DamagedShard(f"unsafe member name {name!r}")
        yield name, data


def opened(shards: Iterable[dict], store: Store, counters: Counters) -> Iterator[tuple[dict, object]]:
    """(shard, open `ShardFile`) pairs. From a remote store without a cache the next shard is opened
    one ahead, so its first block downloads while the current shard is read; local and cached
    shards open on demand (a cache fill runs in this thread and is never left behind). A shard that
    is missing, or fails its cache fill's sha256 check, is skipped: all its samples count as bad."""
    ahead = None
    try:
        for shard in shards:
            try:
                handle = store.open_shard(shard["url"], size=shard["num_bytes"], sha256=shard["sha256"])
            except BadShard as exc:
                lost(counters, shard, read=0, why=str(exc))
                continue
            if not store.reads_ahead:
                yield shard, handle
                continue
            if ahead is None:
                ahead = (shard, handle)
                continue
            current, ahead = ahead, (shard, handle)
            yield current
        if ahead is not None:
            current, ahead = ahead, None
            yield current
    finally:  # the stream stopped early: close the shard opened ahead
        if ahead is not None:
            ahead[1].close()


def lost(counters: Counters, shard: dict, *, read: int, why: str) -> None:
    """Count a shard's unread samples as bad; at least one, since a shard found wrong after its
    last sample (sha256, extra members) still means the store is not what the manifest says."""
    counters.bad(f"{why}; {read} of {shard['num_samples']} samples read", max(shard["num_samples"] - read, 1))


def grouped(members: Iterable[tuple[str, bytes]], counters: Counters) -> Iterator[tuple[str, dict]]:
    """(key, {extension: bytes}) per run of members sharing a key, as WebDataset groups them. Where
    the tar breaks off, the sample read so far still goes out (`decode` counts it if incomplete)."""
    current, parts = None, {}
    try:
        for name, data in members:
            key, ext = split_member(name)  # `ds/id.mask.0.png` belongs to `ds/id`
            if key != current:
                if current is not None:
                    yield current, parts
                current, parts = key, {}
            counters.bytes += len(data)
            parts[ext] = data
    except (DamagedShard, UnicodeDecodeError):
        if current is not None:
            yield current, parts
        raise
    if current is not None:
        yield current, parts


def tar_samples(shards: Iterable[dict], store: Store, counters: Counters) -> Iterator[dict]:
    """Each shard's samples, never more than the manifest's count (so ranks stay in step). A shard
    that is damaged, short, longer, or not the bytes the manifest lists ends there and its unread
    samples count as bad; an outage that outlasts the retries raises `ShardReadError`."""
    for shard, handle in opened(shards, store, counters):
        counters.shards += 1
        url, count, why, first = store.describe(shard["url"]), 0, None, shard.get("first", 0)
        with handle:
            try:
                for key, parts in grouped(tar_members(handle), counters):
                    if count == shard["num_samples"]:
                        raise DamagedShard("more samples than the manifest lists")
                    if count >= first:  # a `sequence` range may begin inside the shard
                        yield {"key": key, "shard": url, "position": count, "parts": parts}
                    count += 1
                handle.finish()  # a mismatch here comes after the samples were yielded: flagged, not undone
            except BadShard as exc:
                why = str(exc)
            except (DamagedShard, UnicodeDecodeError) as exc:
                why = f"damaged shard {url}: {type(exc).__name__}: {exc}"
        if why is None and count < shard["num_samples"]:
            why = f"{url} ended early"
        if why is not None:
            lost(counters, shard, read=max(count, first), why=why)


def shuffle(samples: Iterable[dict], size: int, rng: np.random.Generator, *, initial: int = 100) -> Iterator[dict]:
    """A buffer of up to `size` samples emitting a random one per step. It starts emitting once it
    holds `initial` and keeps growing (two in, one out) until full, so the first batch of a round
    does not wait for a whole buffer of shards to download."""
    iterator = iter(samples)
    buffer = []
    for sample in iterator:
        buffer.append(sample)
        if len(buffer) < size:
            extra = next(iterator, None)
            if extra is not None:
                buffer.append(extra)
        if len(buffer) >= min(initial, size):
            i = rng.integers(len(buffer))
            buffer[i], buffer[-1] = buffer[-1], buffer[i]
            yield buffer.pop()
    rng.shuffle(buffer)
    yield from buffer


def exclude(samples: Iterable[dict], keys: frozenset[str]) -> Iterator[dict]:
    """Leave out the samples whose key (`<dataset>/<id>`) is in `keys`, undecoded."""
    if not keys:
        yield from samples
        return
    for sample in samples:
        if sample["key"] not in keys:
            yield sample


def share(samples: Iterable[dict], count: int, size: int, rng: np.random.Generator) -> Iterator[dict]:
    """The first `count` samples (a stream's range of the round) shuffled in a buffer of up to
    `size`, none read beyond them; then the samples that follow, in order. Those are reached only
    when bad samples left the range short, so every rank still yields its batches (a sample may
    then be trained on twice in the round). A streamed shard's sha256 is checked once its end is
    read, so here only by the stream whose range runs past that end."""
    iterator = iter(samples)
    yield from shuffle(itertools.islice(iterator, count), max(1, min(size, count)), rng)
    yield from iterator


def number(samples: Iterable[dict]) -> Iterator[dict]:
    """Tag each sample with its position in the (shuffled) stream: the key of its random draws."""
    for index, sample in enumerate(samples):
        sample["index"] = index
        yield sample


def skip(samples: Iterable[dict], count: int) -> Iterator[dict]:
    """Drop the first `count` samples without decoding them (resuming mid-round)."""
    for index, sample in enumerate(samples):
        if index >= count:
            yield sample


def decode_image(data: bytes, load_size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Stored image bytes -> ((L, L) uint8 canvas, stored (w, h)). JPEGs decode at reduced scale
    when the canvas is small enough (libjpeg's DCT scaling: the cheapest resize there is)."""
    img = Image.open(io.BytesIO(data))
    size = img.size
    if img.format == "JPEG":
        img.draft("L", (load_size, load_size))
    if img.mode != "L":
        img = img.convert("L")
    if img.size != (load_size, load_size):
        img = img.resize((load_size, load_size), Image.Resampling.BILINEAR)
    return np.asarray(img), size


def decode(samples: Iterable[dict], load_size: int, counters: Counters, *,
           dense: DenseSpec | None = None, on_device: bool = False) -> Iterator[dict]:
    """Image bytes -> uint8 canvas; JSON -> facts; with `dense`, mask members and boxes too.
    Undecodable samples (a corrupt mask included) are skipped and counted. `on_device`
    (`data.decode: device`): a JPEG the device can decode keeps its bytes (`jpeg`, with `canvas`
    the side to decode onto) and only its header is read here (device_decode.py)."""
    for sample in samples:
        parts = sample.pop("parts")
        image = parts.get("jpg", parts.get("png"))
        try:
            if image is None or "json" not in parts:
                raise ValueError(f"members {sorted(parts)}: no image or no json")
            size = jpeg_size(image) if on_device else None
            if size is None:
                pixels, size = decode_image(image, load_size)
                sample["image"] = torch.from_numpy(pixels.copy()).unsqueeze(0)
            else:
                sample.update(jpeg=encoded(image), canvas=load_size)
            facts = json.loads(parts["json"])
            extra = {} if dense is None else dense_targets(parts, facts, spec=dense, stored_size=size,
                                                            load_size=load_size, where=sample["key"])
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            counters.bad(f"{sample['key']} in {sample['shard']}: {type(exc).__name__}: {exc}")
            continue
        counters.samples += 1
        sample.update(size=size, facts=facts, **extra)
        yield sample


def label(samples: Iterable[dict], policy: LabelPolicy) -> Iterator[dict]:
    for sample in samples:
        target, mask = policy(sample["facts"])
        sample.update(target=torch.from_numpy(target), mask=torch.from_numpy(mask))
        yield sample


def views(samples: Iterable[dict], cfg, seed: list[int]) -> Iterator[dict]:
    """Draw each sample's warps from a generator keyed by (stream seed, position in the stream),
    so a resumed stream draws exactly what the uninterrupted one would have."""
    for sample in samples:
        rng = np.random.default_rng([*seed, sample["index"]])
        drawn = draw_views(rng, *sample["size"], cfg)
        sample.update({k: torch.from_numpy(v) for k, v in drawn.items()})
        yield sample


def batched(samples: Iterable[dict], size: int, counters: Counters, *, partial: bool) -> Iterator[dict]:
    """Stack samples into a batch dict; `partial` keeps a short last batch (evaluation)."""
    chunk = []
    for sample in samples:
        chunk.append(sample)
        if len(chunk) == size:
            yield collate(chunk, counters)
            chunk = []
    if chunk and partial:
        yield collate(chunk, counters)


TENSORS = ("target", "mask", "theta_student", "theta_teacher", "photo", "dataset", "masks", "mask_known")
RAGGED = ("boxes", "box_labels")  # lists: a sample has any number of boxes


SUBGROUPS = ("sex", "age", "view")  # sample facts an evaluation can break its AUC down by, where a dataset has them


def collate(chunk: list[dict], counters: Counters) -> dict:
    batch = {k: torch.stack([s[k] for s in chunk]) for k in TENSORS if k in chunk[0]}  # `image` below
    decoded = [s for s in chunk if "image" in s]
    if len(decoded) < len(chunk):  # data.decode: device; the rows left encoded are zeros in `image`, if any
        batch.update(pack([s.get("jpeg") for s in chunk]), canvas=next(s["canvas"] for s in chunk if "jpeg" in s))
    if decoded:
        blank = torch.zeros_like(decoded[0]["image"])
        batch["image"] = torch.stack([s.get("image", blank) for s in chunk])
    if "boxes" in chunk[0]:  # dense: boxes stay in stored pixels; `size` lets the device warp them
        batch.update({k: [s[k] for s in chunk] for k in RAGGED})
        batch["size"] = torch.tensor([s["size"] for s in chunk], dtype=torch.int64)  # (B, 2) stored (w, h)
    batch["ids"] = [s["facts"]["id"] for s in chunk]
    batch["subgroups"] = [{k: s["facts"].get(k) for k in SUBGROUPS} for s in chunk]  # for per-group AUCs
    batch["valid"] = torch.ones(len(chunk), dtype=torch.bool)
    batch["stats"] = [counters.snapshot()]  # a list: an interleaved batch has one per dataset
    return batch

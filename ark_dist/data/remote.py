"""Reading shards from the store: ranged reads with retries and backoff, and an optional
node-local cache keyed by the shard's sha256 (so it never serves stale bytes).

Transient errors (connection reset/refused, timeouts, 5xx, throttling) are retried; after the
last attempt the run fails with a `ShardReadError` naming the shard URL and the endpoint: an outage
is not bad data, and skipping every shard it touches would quietly thin the training set. A shard
that is missing, refused, or not the bytes the manifest lists raises `BadShard`, which the loader
skips and counts against its bad-sample budget (ark_dist/data/stages.py).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import io
import logging
import os
import posixpath
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import fsspec

from ark_dist.data.config import StoreConfig

log = logging.getLogger(__name__)

# Failures that are not worth retrying: the object is not there, or we may not read it.
PERMANENT = (FileNotFoundError, PermissionError, IsADirectoryError)


class ShardReadError(RuntimeError):
    """A shard (or the manifest) that could not be read after every retry."""


class BadShard(ShardReadError):
    """A shard that is missing, refused, or not the bytes the manifest lists: retrying cannot help."""


class Store:
    """Read-only view of a shard store (local folder or s3://bucket/prefix)."""

    def __init__(self, config: StoreConfig):
        self.config = config
        url = config.url.rstrip("/")
        self.url = url
        self._fs = None
        if url.startswith("s3://"):
            self.endpoint = (config.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3")
                             or os.environ.get("AWS_ENDPOINT_URL"))
            self.root = url[len("s3://"):]
        else:
            self.endpoint = None
            self._fs = fsspec.filesystem("file")
            self.root = str(Path(url.removeprefix("file://")).resolve())
        self.is_local = not url.startswith("s3://")
        self.reads_ahead = not self.is_local and not config.cache_dir  # see stages.opened
        self.cache = ShardCache(Path(config.cache_dir), int(config.cache_gb * 2**30)) if config.cache_dir else None

    @property
    def fs(self):
        """The filesystem client, made on first use: a loader process served from the node cache
        never pays for an S3 session."""
        if self._fs is None:
            options = {"client_kwargs": {"endpoint_url": self.endpoint}} if self.endpoint else {}
            self._fs = fsspec.filesystem("s3", skip_instance_cache=True, **options)
        return self._fs

    def __getstate__(self):  # loader workers rebuild the filesystem client in their own process
        return {"config": self.config}

    def __setstate__(self, state):
        self.__init__(state["config"])

    def describe(self, rel: str) -> str:
        where = f" (endpoint {self.endpoint})" if self.endpoint else ""
        return f"{posixpath.join(self.url, rel)}{where}"

    def _retry(self, what: str, rel: str, func, *, permanent: type[ShardReadError] = ShardReadError):
        delay = self.config.backoff_s
        for attempt in range(1, self.config.retries + 1):
            try:
                return func()
            except PERMANENT as exc:
                raise permanent(f"cannot {what} {self.describe(rel)}: {type(exc).__name__}: {exc}") from exc
            except Exception as exc:  # noqa: BLE001 - network stacks raise many types for one outage
                if attempt == self.config.retries:
                    raise ShardReadError(f"cannot {what} {self.describe(rel)} after {attempt} attempts: "
                                         f"{type(exc).__name__}: {exc}") from exc
                log.warning("retrying %s of %s in %.1f s (attempt %d of %d failed: %s)", what, self.describe(rel),
                            delay, attempt, self.config.retries, type(exc).__name__)
                time.sleep(delay)
                delay = min(delay * 2, 8.0)

    def read_bytes(self, rel: str) -> bytes:
        """A whole (small) object, e.g. the manifest."""
        return self._retry("read", rel, lambda: self.fs.cat_file(posixpath.join(self.root, rel)))

    def open_shard(self, rel: str, *, size: int, sha256: str) -> ShardFile:
        """One shard, read front to back: the cached copy (verified when it was filled), or the
        store's own bytes hashed as they stream and checked by `ShardFile.finish`."""
        if self.cache is not None:
            handle = self.cache.open(sha256, size, lambda dest: self._download(rel, dest, size=size, sha256=sha256))
            return ShardFile(handle, sha256=None, name=self.describe(rel))
        return ShardFile(self.open_uncached(rel, size), sha256=sha256, name=self.describe(rel))

    def _download(self, rel: str, dest: Path, *, size: int, sha256: str) -> None:
        src = ShardFile(self.open_uncached(rel, size), sha256=sha256, name=self.describe(rel))
        with src, open(dest, "wb") as out:
            for block in iter(lambda: src.read(1 << 22), b""):
                out.write(block)
            src.finish()

    def open_uncached(self, rel: str, size: int):
        """The shard in the store itself: a plain file, or ranged reads from S3."""
        if self.is_local:
            return self._retry("open", rel, lambda: open(posixpath.join(self.root, rel), "rb"), permanent=BadShard)
        return io.BufferedReader(RangedReader(self, rel, size, int(self.config.block_mb * 2**20)))


class ShardFile:
    """A shard's bytes with their sha256 computed on the way through. A streamed shard's hash is
    only known once its last byte is read, after its samples went down the pipeline: `finish` can
    flag it, not take them back."""

    def __init__(self, raw, *, sha256: str | None, name: str):
        self.raw, self.sha256, self.name = raw, sha256, name
        self.digest = hashlib.sha256() if sha256 else None

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        if self.digest is not None:
            self.digest.update(data)
        return data

    def finish(self) -> None:
        """Read what the tar reader left (its end-of-archive padding); raise `BadShard` when the
        bytes are not the ones the manifest lists."""
        if self.digest is None:
            return
        while self.read(1 << 20):
            pass
        if self.digest.hexdigest() != self.sha256:
            raise BadShard(f"{self.name}: sha256 differs from the manifest (the store changed under the manifest, "
                           f"or the object is damaged)")

    def close(self) -> None:
        self.raw.close()

    def __enter__(self) -> ShardFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_POOL: tuple[int, ThreadPoolExecutor] | None = None


def background() -> ThreadPoolExecutor:
    """This process's block-download threads (made after a fork, never inherited from the parent).
    Only ranged block reads run here, never work that waits on the pool itself."""
    global _POOL
    if _POOL is None or _POOL[0] != os.getpid():
        _POOL = (os.getpid(), ThreadPoolExecutor(4, thread_name_prefix="shard-io"))
    return _POOL[1]


class RangedReader(io.RawIOBase):
    """Sequential reads of one object as ranged GETs of `block` bytes, each retried, the next one
    always in flight while the current one is consumed: a dropped connection costs one block, and
    network time overlaps decoding."""

    def __init__(self, store: Store, rel: str, size: int, block: int):
        self.store, self.rel, self.size, self.block = store, rel, size, block
        self.path = posixpath.join(store.root, rel)
        self._view, self._fetched = memoryview(b""), 0
        self._next = self._fetch()

    def _fetch(self):
        start, end = self._fetched, min(self.size, self._fetched + self.block)
        if start >= end:
            return None
        self._fetched, self._wanted = end, end - start
        return background().submit(self.store._retry, "read", self.rel,
                                   lambda: self.store.fs.cat_file(self.path, start=start, end=end), permanent=BadShard)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if not len(self._view):
            if self._next is None:
                return 0
            data = self._next.result()
            if len(data) < self._wanted:  # a shorter object: a request past its end would only fail
                raise BadShard(f"{self.store.describe(self.rel)}: object shorter than the manifest's "
                               f"{self.size} bytes")
            self._view, self._next = memoryview(data), self._fetch()
        count = min(len(buffer), len(self._view))
        buffer[:count] = self._view[:count]
        self._view = self._view[count:]
        return count

    def close(self) -> None:
        if self._next is not None:
            self._next.cancel()
            self._next = None
        super().close()


class ShardCache:
    """A size-bounded folder of shards named by sha256, shared by every loader process and rank on
    a node. One process downloads a shard (under an exclusive lock, to a temporary name, then a
    rename) while the others wait for it; least recently used shards are evicted past the bound.
    An evicted shard that a reader still has open stays readable (POSIX unlink semantics)."""

    def __init__(self, folder: Path, max_bytes: int):
        self.folder, self.max_bytes = folder, max_bytes
        folder.mkdir(parents=True, exist_ok=True)

    def open(self, sha256: str, size: int, fill):
        path = self.folder / f"{sha256}.tar"
        try:
            handle = open(path, "rb")
        except FileNotFoundError:
            handle = None
        if handle is not None:
            try:
                os.utime(path)  # mark as recently used
            except FileNotFoundError:
                pass  # evicted just now: our open handle still reads it
            return handle
        with open(self.folder / f"{sha256}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not path.exists():  # nobody filled it while we waited
                self._evict(room_for=size, keep=path)
                tmp = self.folder / f"{sha256}.tmp-{uuid.uuid4().hex[:8]}"
                try:
                    fill(tmp)
                    os.replace(tmp, path)
                finally:
                    tmp.unlink(missing_ok=True)
                self._evict(room_for=0, keep=path)  # others may have filled meanwhile
            return open(path, "rb")  # opened under the lock: an eviction cannot win the race

    def _evict(self, *, room_for: int, keep: Path) -> None:
        """Delete least recently used shards until `room_for` more bytes fit; one process at a time."""
        with open(self.folder / ".evict.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            shards = []
            filling = 0  # other processes' downloads in progress count against the bound too
            for entry in os.scandir(self.folder):
                try:
                    stat = entry.stat()
                except FileNotFoundError:
                    continue
                if ".tmp-" in entry.name:
                    filling += stat.st_size
                elif entry.name.endswith(".tar") and entry.path != str(keep):
                    shards.append((stat.st_mtime, stat.st_size, entry.path))
            total = sum(s for _, s, _ in shards) + filling + (keep.stat().st_size if keep.exists() else 0)
            for _, size, victim in sorted(shards):
                if total + room_for <= self.max_bytes:
                    break
                try:
                    os.unlink(victim)
                    Path(victim).with_suffix(".lock").unlink(missing_ok=True)
                    total -= size
                except OSError as exc:
                    if exc.errno != errno.ENOENT:
                        raise

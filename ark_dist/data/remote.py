"""Reading shards from the store: ranged reads with retries and backoff, and an optional
node-local cache keyed by the shard's sha256 (so it never serves stale bytes).

Transient errors (connection reset/refused, timeouts, 5xx, throttling) are retried; after the
last attempt the run fails with a `ShardReadError` naming the shard URL and the endpoint.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import io
import os
import posixpath
import time
import uuid
from pathlib import Path

import fsspec

from ark_dist.data.config import StoreConfig

# Failures that are not worth retrying: the object is not there, or we may not read it.
PERMANENT = (FileNotFoundError, PermissionError, IsADirectoryError)


class ShardReadError(RuntimeError):
    """A shard that could not be read after every retry."""


class Store:
    """Read-only view of a shard store (local folder or s3://bucket/prefix)."""

    def __init__(self, config: StoreConfig):
        self.config = config
        url = config.url.rstrip("/")
        self.url = url
        if url.startswith("s3://"):
            endpoint = config.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
            self.endpoint = endpoint
            options = {"client_kwargs": {"endpoint_url": endpoint}} if endpoint else {}
            self.fs = fsspec.filesystem("s3", skip_instance_cache=True, **options)
            self.root = url[len("s3://"):]
        else:
            self.endpoint = None
            self.fs = fsspec.filesystem("file")
            self.root = str(Path(url.removeprefix("file://")).resolve())
        self.is_local = self.endpoint is None and not url.startswith("s3://")
        self.cache = ShardCache(Path(config.cache_dir), int(config.cache_gb * 2**30)) if config.cache_dir else None

    def __getstate__(self):  # loader workers rebuild the filesystem client in their own process
        return {"config": self.config}

    def __setstate__(self, state):
        self.__init__(state["config"])

    def describe(self, rel: str) -> str:
        where = f" (endpoint {self.endpoint})" if self.endpoint else ""
        return f"{posixpath.join(self.url, rel)}{where}"

    def _retry(self, what: str, rel: str, func):
        delay = self.config.backoff_s
        for attempt in range(1, self.config.retries + 1):
            try:
                return func()
            except PERMANENT as exc:
                raise ShardReadError(f"cannot {what} {self.describe(rel)}: {type(exc).__name__}: {exc}") from exc
            except Exception as exc:  # noqa: BLE001 - network stacks raise many types for one outage
                if attempt == self.config.retries:
                    raise ShardReadError(f"cannot {what} {self.describe(rel)} after {attempt} attempts: "
                                         f"{type(exc).__name__}: {exc}") from exc
                time.sleep(delay)
                delay = min(delay * 2, 8.0)

    def read_bytes(self, rel: str) -> bytes:
        """A whole (small) object, e.g. the manifest."""
        return self._retry("read", rel, lambda: self.fs.cat_file(posixpath.join(self.root, rel)))

    def open_shard(self, rel: str, *, size: int, sha256: str):
        """A binary file object over one shard: the cached copy, a plain file, or ranged reads."""
        if self.cache is not None:
            return self.cache.open(sha256, size, lambda dest: self._download(rel, dest, size=size, sha256=sha256))
        if self.is_local:
            path = posixpath.join(self.root, rel)
            return self._retry("open", rel, lambda: open(path, "rb"))
        return io.BufferedReader(RangedReader(self, rel, size), buffer_size=int(self.config.block_mb * 2**20))

    def _download(self, rel: str, dest: Path, *, size: int, sha256: str) -> None:
        digest = hashlib.sha256()
        with self.open_uncached(rel, size) as src, open(dest, "wb") as out:
            for block in iter(lambda: src.read(1 << 22), b""):
                digest.update(block)
                out.write(block)
        if digest.hexdigest() != sha256:
            raise ShardReadError(f"{self.describe(rel)}: sha256 differs from the manifest (the store changed "
                                 f"under the manifest, or the object is damaged)")

    def open_uncached(self, rel: str, size: int):
        if self.is_local:
            return self._retry("open", rel, lambda: open(posixpath.join(self.root, rel), "rb"))
        return io.BufferedReader(RangedReader(self, rel, size), buffer_size=int(self.config.block_mb * 2**20))


class RangedReader(io.RawIOBase):
    """Sequential reads of one object as independent ranged GETs, each retried: a dropped connection
    costs one block, not the shard."""

    def __init__(self, store: Store, rel: str, size: int):
        self.store, self.rel, self.size, self.pos = store, rel, size, 0
        self.path = posixpath.join(store.root, rel)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self.pos >= self.size:
            return 0
        end = min(self.size, self.pos + len(buffer))
        data = self.store._retry("read", self.rel, lambda: self.store.fs.cat_file(self.path, start=self.pos, end=end))
        if not data:
            raise ShardReadError(f"{self.store.describe(self.rel)}: object ended at byte {self.pos}, manifest "
                                 f"says {self.size}")
        buffer[: len(data)] = data
        self.pos += len(data)
        return len(data)


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
            os.utime(path)  # mark as recently used
            return handle
        except FileNotFoundError:
            pass
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
        return open(path, "rb")

    def _evict(self, *, room_for: int, keep: Path) -> None:
        """Delete least recently used shards until `room_for` more bytes fit; one process at a time."""
        with open(self.folder / ".evict.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            shards = []
            for entry in os.scandir(self.folder):
                if entry.name.endswith(".tar") and entry.path != str(keep):
                    try:
                        stat = entry.stat()
                    except FileNotFoundError:
                        continue
                    shards.append((stat.st_mtime, stat.st_size, entry.path))
            total = sum(s for _, s, _ in shards) + (keep.stat().st_size if keep.exists() else 0)
            for _, size, victim in sorted(shards):
                if total + room_for <= self.max_bytes:
                    break
                try:
                    os.unlink(victim)
                    total -= size
                except OSError as exc:
                    if exc.errno != errno.ENOENT:
                        raise

    def usage(self) -> int:
        return sum(e.stat().st_size for e in os.scandir(self.folder) if e.name.endswith(".tar"))

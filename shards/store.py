"""Object storage behind one small interface: a local folder or any S3-compatible bucket.

Every write goes to a temporary name and is renamed into place, so a reader (or a resumed build)
never sees half an object. On S3 the rename is a server-side copy + delete.
"""

from __future__ import annotations

import os
import posixpath
import uuid
from pathlib import Path

import fsspec

from shards.errors import ShardsError

TMP_MARK = ".tmp-"


def _s3_options(endpoint_url: str | None) -> dict:
    # Credentials and region come from the usual AWS chain (env, profile, instance role); only the
    # endpoint is passed explicitly so MinIO/Ceph/moto work even where botocore ignores the env var.
    endpoint = endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    return {"client_kwargs": {"endpoint_url": endpoint}} if endpoint else {}


class Store:
    """A root URL (`/path`, `file:///path` or `s3://bucket/prefix`) and paths relative to it."""

    def __init__(self, url: str, *, endpoint_url: str | None = None):
        self.url = url.rstrip("/")
        if self.url.startswith("s3://"):
            self.fs = fsspec.filesystem("s3", **_s3_options(endpoint_url))
            self.root = self.url[len("s3://"):]
            self.is_local = False
        elif "://" in self.url and not self.url.startswith("file://"):
            raise ShardsError(f"unsupported store URL {url!r}: use a local folder or s3://bucket/prefix")
        else:
            self.fs = fsspec.filesystem("file")
            self.root = str(Path(self.url.removeprefix("file://")).resolve())
            self.is_local = True
        self.endpoint = (self.fs.client_kwargs or {}).get("endpoint_url") if not self.is_local else None

    def __repr__(self) -> str:
        return f"Store({self.url!r})"

    def path(self, rel: str) -> str:
        return posixpath.join(self.root, rel) if rel else self.root

    def describe(self, rel: str = "") -> str:
        """A URL for messages: the store URL joined with `rel` (never credentials)."""
        return posixpath.join(self.url, rel) if rel else self.url

    def _fail(self, action: str, rel: str, exc: Exception) -> ShardsError:
        where = f" (endpoint {self.endpoint})" if self.endpoint else ""
        return ShardsError(f"cannot {action} {self.describe(rel)}{where}: {type(exc).__name__}: {exc}")

    def check_reachable(self) -> None:
        """Fail early, with one line, when the bucket or folder cannot be reached."""
        try:
            if self.is_local:
                return
            bucket = self.root.split("/", 1)[0]
            if not self.fs.exists(bucket):
                raise FileNotFoundError(f"bucket {bucket!r} does not exist")
        except ShardsError:
            raise
        except Exception as exc:  # noqa: BLE001 - any client error becomes one clear line
            raise self._fail("reach", "", exc) from exc

    def exists(self, rel: str) -> bool:
        try:
            return self.fs.exists(self.path(rel))
        except Exception as exc:  # noqa: BLE001
            raise self._fail("stat", rel, exc) from exc

    def read_bytes(self, rel: str) -> bytes:
        try:
            return self.fs.cat_file(self.path(rel))
        except FileNotFoundError as exc:
            raise ShardsError(f"not found: {self.describe(rel)}") from exc
        except Exception as exc:  # noqa: BLE001
            raise self._fail("read", rel, exc) from exc

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Write `data` to `rel` atomically: a temporary name in the same folder, then a rename."""
        final = self.path(rel)
        tmp = f"{final}{TMP_MARK}{uuid.uuid4().hex[:12]}"
        try:
            if self.is_local:
                os.makedirs(os.path.dirname(final), exist_ok=True)
                with open(tmp, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, final)
            else:
                self.fs.pipe_file(tmp, data)
                self.fs.mv(tmp, final)
        except Exception as exc:  # noqa: BLE001
            self._discard(tmp)
            raise self._fail("write", rel, exc) from exc

    def _discard(self, full: str) -> None:
        try:
            self.fs.rm(full)
        except (FileNotFoundError, OSError):
            pass

    def delete(self, rel: str, *, recursive: bool = False) -> None:
        try:
            self.fs.rm(self.path(rel), recursive=recursive)
        except FileNotFoundError:
            pass
        except Exception as exc:  # noqa: BLE001
            raise self._fail("delete", rel, exc) from exc

    def list(self, rel: str) -> list[str]:
        """Names (not paths) of the objects directly under folder `rel`; empty if none."""
        self.fs.invalidate_cache(self.path(rel))  # S3 listings are cached; another process may have written
        try:
            found = self.fs.ls(self.path(rel), detail=False)
        except FileNotFoundError:
            return []
        except Exception as exc:  # noqa: BLE001
            raise self._fail("list", rel, exc) from exc
        return sorted(posixpath.basename(p.rstrip("/")) for p in found)

    def remove_temporaries(self, rel: str) -> int:
        """Delete leftovers of interrupted writes under folder `rel`; returns how many."""
        names = [n for n in self.list(rel) if TMP_MARK in n]
        for name in names:
            self.delete(posixpath.join(rel, name))
        return len(names)

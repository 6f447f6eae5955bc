"""Local paths and object-store URLs behind one fsspec call (run folders, checkpoints, exports)."""

from __future__ import annotations

import os
import uuid

import fsspec


def filesystem(url: str):
    """(filesystem, path) for a local path or URL; S3 endpoints come from AWS_ENDPOINT_URL[_S3]
    (passed explicitly: not every botocore reads the variable). Credentials stay with the AWS chain."""
    options = {}
    if url.startswith("s3://"):
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        # A fresh client: a cached one would also serve cached (stale) listings of a run folder.
        options = {"skip_instance_cache": True, **({"client_kwargs": {"endpoint_url": endpoint}} if endpoint else {})}
    return fsspec.core.url_to_fs(url, **options)


def is_local(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


def join(url: str, *names: str) -> str:
    return "/".join([url.rstrip("/"), *names])


def write_atomic(url: str, data: bytes) -> None:
    """Whole-or-nothing: a local file is written beside its name and renamed into place; an object
    store's single PUT is atomic already."""
    fs, path = filesystem(url)
    if not is_local(url):
        fs.pipe_file(path, data)
        return
    fs.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)

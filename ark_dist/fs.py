"""Local paths and object-store URLs behind one fsspec call (run folders, checkpoints, exports)."""

from __future__ import annotations

import os
import uuid

import fsspec


# botocore's standard retry mode retries refused connections, timeouts, throttling and 5xx with
# exponential backoff (at most 20 s apart): 10 attempts wait out an endpoint that is down for about
# half a minute, e.g. while a MinIO/Ceph gateway restarts.
S3_RETRIES = {"max_attempts": 10, "mode": "standard"}


def s3_options() -> dict:
    """s3fs options: the endpoint from AWS_ENDPOINT_URL[_S3] (passed explicitly: not every botocore
    reads the variable), patient retries, and a fresh client (a cached one would also serve cached,
    stale listings of a run folder). Credentials stay with the AWS chain: never in these options,
    which travel with a pickled filesystem."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    return {"skip_instance_cache": True, "config_kwargs": {"retries": S3_RETRIES},
            **({"client_kwargs": {"endpoint_url": endpoint}} if endpoint else {})}


def filesystem(url: str):
    """(filesystem, path) for a local path or URL."""
    return fsspec.core.url_to_fs(url, **(s3_options() if url.startswith("s3://") else {}))


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
    except OSError as exc:  # a full disk says so without naming the file: name it
        raise OSError(exc.errno, exc.strerror, path) from exc
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)

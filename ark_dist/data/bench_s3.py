"""The S3 and cache rows of `bench data`: the same store served by a local S3 server (moto's, in
its own process so that it does not share the loader's interpreter)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import replace
from pathlib import Path

from ark_dist.data.config import DataConfig


def _serve() -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return server, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    server.kill()
    raise RuntimeError("the local S3 server (moto) did not start")


def s3_rates(config: DataConfig, entry: dict, folder: Path, *, workers: int, rate) -> dict:
    """{local, s3, cache_cold, cache_warm} pipeline rates; `rate(config)` measures one config."""
    import boto3

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    server, endpoint = _serve()
    try:
        bucket = f"bench-{uuid.uuid4().hex[:8]}"
        client = boto3.client("s3", endpoint_url=endpoint)
        client.create_bucket(Bucket=bucket)
        local = Path(config.store.url)
        for path in local.rglob("*"):
            if path.is_file():
                client.upload_file(str(path), bucket, f"store/{path.relative_to(local).as_posix()}")
        remote = replace(config.store, url=f"s3://{bucket}/store", endpoint_url=endpoint)
        warm = replace(remote, cache_dir=str(folder / "cache"))
        out = {"workers": workers, "local": rate(config), "s3": rate(replace(config, store=remote))}
        # Cold: every repeat starts from an empty cache of its own.
        colds = iter(range(1000))
        out["cache_cold"] = rate(lambda: replace(config, store=replace(remote, cache_dir=str(folder / f"cold{next(colds)}"))))
        rate(replace(config, store=warm))  # fills it
        out["cache_warm"] = rate(replace(config, store=warm))
        return out
    finally:
        server.kill()
        server.wait()

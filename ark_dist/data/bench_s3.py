"""The S3 and cache rows of `bench data`: the same store served by a local S3 server (moto)."""

from __future__ import annotations

import socket
import uuid
from dataclasses import replace
from pathlib import Path

from ark_dist.data.config import DataConfig


def s3_rates(config: DataConfig, entry: dict, folder: Path, *, workers: int, rate) -> dict:
    """{local, s3, cache_cold, cache_warm} pipeline rates; `rate(config)` measures one config."""
    import boto3
    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        bucket = f"bench-{uuid.uuid4().hex[:8]}"
        client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="bench", aws_secret_access_key="bench",
                              region_name="us-east-1")
        client.create_bucket(Bucket=bucket)
        local = Path(config.store.url)
        for path in local.rglob("*"):
            if path.is_file():
                client.upload_file(str(path), bucket, f"store/{path.relative_to(local).as_posix()}")
        import os

        os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
        remote = replace(config.store, url=f"s3://{bucket}/store", endpoint_url=endpoint)
        cached = replace(remote, cache_dir=str(folder / "cache"))
        out = {"workers": workers, "local": rate(config), "s3": rate(replace(config, store=remote))}
        out["cache_cold"] = rate(replace(config, store=replace(cached, cache_dir=str(folder / "cold")), ))
        rate(replace(config, store=cached))  # fill
        out["cache_warm"] = rate(replace(config, store=cached))
        return out
    finally:
        server.stop()

"""The same commands against a real S3 HTTP endpoint (moto's server on loopback)."""

from __future__ import annotations

import hashlib
import json
import time

import boto3

import labelfacts
from conftest import SOURCES, run_shards
from shards.samples import read_tar


def _client(endpoint):
    return boto3.client("s3", endpoint_url=endpoint)


def test_build_verify_ls_on_s3(synth_root, s3_endpoint, s3_bucket):
    url = f"s3://{s3_bucket}/cxr"
    for source in SOURCES:
        code, _, err = run_shards("build", "--source", source, "--root", synth_root / source, "--out", url,
                                  "--quiet", "--workers", "1", "--samples-per-shard", "4")
        assert code == 0, err
    code, out, _ = run_shards("verify", "--store", url)
    assert code == 0 and "0 bad" in out
    code, out, _ = run_shards("ls", "--store", url)
    assert code == 0 and len(out.strip().splitlines()) == 1 + 3 * len(SOURCES)

    s3 = _client(s3_endpoint)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=s3_bucket)["Contents"]]
    assert not [k for k in keys if ".tmp-" in k or "/_build/" in k], "no temporaries left behind"
    manifest = json.loads(s3.get_object(Bucket=s3_bucket, Key="cxr/manifest.json")["Body"].read())
    for source in ("vindr_cxr", "chexpert"):
        expected = labelfacts.READERS[source](synth_root / source)
        seen = {}
        for info in manifest["datasets"][source]["splits"].values():
            for shard in info["shards"]:
                data = s3.get_object(Bucket=s3_bucket, Key=f"cxr/{shard['url']}")["Body"].read()
                assert hashlib.sha256(data).hexdigest() == shard["sha256"]
                for _, parts in read_tar(data):
                    facts = json.loads(parts["json"])
                    seen[facts["id"]] = facts
        assert {k: v["labels"] for k, v in seen.items()} == {k: v["labels"] for k, v in expected.items()}

    # Tamper with one shard in the bucket: verify names it.
    victim = manifest["datasets"]["shenzhen"]["splits"]["train"]["shards"][0]["url"]
    data = bytearray(s3.get_object(Bucket=s3_bucket, Key=f"cxr/{victim}")["Body"].read())
    data[600] ^= 0x01
    s3.put_object(Bucket=s3_bucket, Key=f"cxr/{victim}", Body=bytes(data))
    code, out, _ = run_shards("verify", "--store", url)
    assert code == 1 and f"BAD {url}/{victim}" in out


def test_s3_rebuild_resumes_and_matches(synth_root, s3_endpoint, s3_bucket):
    url = f"s3://{s3_bucket}/store"
    args = ("build", "--source", "rsna_pneumonia", "--root", synth_root / "rsna_pneumonia", "--out", url,
            "--quiet", "--workers", "1", "--samples-per-shard", "3")
    assert run_shards(*args)[0] == 0
    s3 = _client(s3_endpoint)
    first = s3.get_object(Bucket=s3_bucket, Key="store/manifest.json")["Body"].read()
    code, _, err = run_shards(*args)
    assert code == 0 and "(6 already built)" in err, err
    assert s3.get_object(Bucket=s3_bucket, Key="store/manifest.json")["Body"].read() == first


def test_missing_bucket_is_one_clear_line(synth_root, s3_endpoint):
    code, _, err = run_shards("build", "--source", "shenzhen", "--root", synth_root / "shenzhen",
                              "--out", "s3://no-such-bucket/x", "--quiet")
    assert code == 2
    assert err.strip().splitlines() == [err.strip()]
    assert "s3://no-such-bucket/x" in err and "does not exist" in err and s3_endpoint in err


def test_unreachable_endpoint_is_one_clear_line(synth_root, s3_endpoint):
    started = time.monotonic()
    code, _, err = run_shards("build", "--source", "shenzhen", "--root", synth_root / "shenzhen",
                              "--out", "s3://ark/x", "--endpoint-url", "http://127.0.0.1:9", "--quiet")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "cannot reach s3://ark/x (endpoint http://127.0.0.1:9)" in err
    assert time.monotonic() - started < 60


def test_unsupported_store_url(synth_root):
    code, _, err = run_shards("ls", "--store", "gs://bucket/x")
    assert code == 2 and "unsupported store URL 'gs://bucket/x'" in err

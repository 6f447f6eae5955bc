"""`launch.py k8s render`: the KubeRay manifests validate against the Kubernetes schemas (the
`kubernetes-validate` package, strict) and KubeRay's (cluster/k8s/schemas/ray.io_v1.json, its
pod templates resolved into the Kubernetes ones), the committed manifests are what `render` writes,
and the RayJob's entrypoint trains for real when `ray job submit` runs it on a local Ray head."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from conftest import TINY_SWIN, _free_port, run_shards

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "cluster" / "k8s"
K8S_VERSION = "1.33"
TINY = str(TINY_SWIN).replace("'", "")
S3_WEIGHTS = "model.pretrained=s3://ark-data/weights/swin_base_patch4_window7_224_22kto1k.pth"


def validator():
    import importlib.resources

    import jsonschema
    from referencing import Registry, Resource

    folder = importlib.resources.files("kubernetes_validate") / "kubernetes-json-schema" / f"v{K8S_VERSION}.0-local-strict"
    k8s = json.loads((folder / "_definitions.json").read_text())
    ray = json.loads((K8S / "schemas" / "ray.io_v1.json").read_text())
    registry = Registry().with_resources([(k8s["$id"], Resource.from_contents(k8s)),
                                          (ray["$id"], Resource.from_contents(ray))])
    return jsonschema.Draft202012Validator(ray, registry=registry)


def validate(doc: dict) -> list[str]:
    """Every error of one document, against its own schema: KubeRay's for ray.io, else Kubernetes'."""
    if doc["apiVersion"].startswith("ray.io/"):
        return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator().iter_errors(doc)]
    import kubernetes_validate

    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [str(exc)]
    return []


def render(*argv: str) -> tuple[int, list[dict], str]:
    done = subprocess.run([sys.executable, "launch.py", "k8s", "render", *argv], cwd=ROOT, capture_output=True,
                          text=True)
    docs = [d for d in yaml.safe_load_all(done.stdout) if d] if done.returncode == 0 else []
    return done.returncode, docs, done.stderr


CASES = {
    "ark6 train": ["train", "--config", "configs/ark6.yaml", S3_WEIGHTS],
    "ark6 on 16 GPUs": ["train", "--config", "configs/ark6.yaml", S3_WEIGHTS, "engine.num_workers=20",
                        "--gpus-per-pod", "4", "--namespace", "radiology", "--node-selector", "gpu=h100",
                        "--toleration", "dedicated", "--priority-class", "research", "--deadline", "86400"],
    "sweep": ["sweep", "--config", "configs/sweep_lr.yaml", S3_WEIGHTS, "tune.max_concurrent_trials=2"],
    "interactive cluster": ["cluster", "--config", "configs/ark6.yaml", S3_WEIGHTS],
    "demo on CPUs": ["train", "--config", "configs/demo.yaml", "data.store.url=s3://b/store",
                     "train.storage_path=s3://b/runs"],
}


@pytest.mark.parametrize("case", CASES)
def test_every_rendered_manifest_validates_against_the_kubernetes_and_kuberay_schemas(case):
    code, docs, err = render(*CASES[case])
    assert code == 0, err
    assert docs and all(validate(doc) == [] for doc in docs), [validate(doc) for doc in docs]


def test_the_validation_catches_what_a_cluster_would_refuse():
    _, docs, _ = render(*CASES["ark6 train"])
    job = next(d for d in docs if d["kind"] == "RayJob")
    assert validate(job) == []
    broken = json.loads(json.dumps(job))
    broken["spec"]["shutdownAfterJobFinish"] = broken["spec"].pop("shutdownAfterJobFinishes")  # KubeRay field
    assert any("shutdownAfterJobFinish" in e for e in validate(broken))
    broken = json.loads(json.dumps(job))
    worker = broken["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]
    worker["containers"][0]["volumeMount"] = worker["containers"][0].pop("volumeMounts")  # Kubernetes field
    assert any("volumeMount" in e for e in validate(broken))
    broken["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"] = "two"
    assert any("'two' is not of type 'integer'" in e for e in validate(broken))


def test_a_training_job_has_what_a_cluster_admin_expects():
    _, docs, _ = render(*CASES["ark6 on 16 GPUs"])
    config_map, job = docs
    spec = job["spec"]
    assert (spec["shutdownAfterJobFinishes"], spec["activeDeadlineSeconds"]) == (True, 86400)
    assert spec["rayClusterSpec"]["authOptions"] == {"mode": "token"}
    assert job["metadata"]["namespace"] == config_map["metadata"]["namespace"] == "radiology"
    (group,) = spec["rayClusterSpec"]["workerGroupSpecs"]
    assert group["replicas"] == group["minReplicas"] == group["maxReplicas"] == 5  # 20 workers / 4 GPUs
    pod = group["template"]["spec"]
    (c,) = pod["containers"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "4" and c["resources"]["limits"]["cpu"] == "32"
    assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "32Gi"}} in pod["volumes"]
    assert {"name": "dshm", "mountPath": "/dev/shm"} in c["volumeMounts"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert {"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert pod["nodeSelector"] == {"gpu": "h100"} and pod["priorityClassName"] == "research"
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 1000
    # Credentials only as references to Secrets, never as values.
    assert {"secretRef": {"name": "ark-dist-s3"}} in c["envFrom"]
    assert {"secretRef": {"name": "ark-dist-wandb", "optional": True}} in c["envFrom"]
    assert not any(re.search(r"KEY|SECRET|TOKEN|PASSWORD", e["name"]) for e in c.get("env", []))
    # The recipe travels in the ConfigMap, resolved, and the entrypoint reads it there.
    recipe = yaml.safe_load(config_map["data"]["recipe.yaml"])
    assert recipe["engine"]["num_workers"] == 20 and recipe["optim"]["lr"] == 0.3
    assert spec["entrypoint"].endswith("launch.py train --config ${ARK_RECIPE_DIR:-/etc/ark-dist}/recipe.yaml")


@pytest.mark.parametrize("name", sorted(p.name for p in K8S.glob("*.yaml")))
def test_the_committed_manifests_are_what_render_writes(name):
    text = (K8S / name).read_text()
    command = re.match(r"# Rendered by `python launch\.py k8s (render .+?)`", text).group(1)
    done = subprocess.run([sys.executable, "launch.py", "k8s", *shlex.split(command)], cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout == text, f"cluster/k8s/{name} is stale: run `python launch.py k8s {command} --out ...`"


@pytest.mark.parametrize("args, message", [
    (["train", "--config", "configs/ark6.yaml"], "model.pretrained='weights/swin_base_patch4_window7_224_22kto1k.pth' is a local path"),
    (["train", "--config", "configs/demo.yaml"], "data.store.url='out/demo/store' is a local path"),
    (["train", "--config", "configs/demo.yaml", "--allow-local-paths"], "must be absolute"),
    (["train", "--config", "configs/ark6.yaml", S3_WEIGHTS, "--pods", "1", "--gpus-per-pod", "4"],
     "1 pod(s) x 4 GPUs hold fewer than the 8 GPU workers"),
    (["train", "--config", "configs/ark6.yaml", S3_WEIGHTS, "engine.num_wrkers=2"], "unknown key"),
])
def test_render_refuses_what_would_fail_on_the_cluster(args, message, tmp_path):
    out = tmp_path / "x.yaml"
    code, _, err = render(*args, "--out", str(out))
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


@pytest.mark.slow
def test_the_rayjob_entrypoint_trains_when_ray_job_submit_runs_it(s3_endpoint, s3_bucket, synth_root, tmp_path):
    for source in ("chexpert", "shenzhen"):
        code, _, err = run_shards("build", "--source", source, "--root", synth_root / source,
                                  "--out", f"s3://{s3_bucket}/store", "--quiet", "--workers", "1",
                                  "--samples-per-shard", "4", "--max-side", "64")
        assert code == 0, err
    code, docs, err = render("train", "--config", "configs/demo.yaml", f"data.store.url=s3://{s3_bucket}/store",
                             f"train.storage_path=s3://{s3_bucket}/runs", "train.name=k8s-tiny",
                             "data.datasets=[chexpert, shenzhen]", "data.num_workers=0", "data.views.image_size=64",
                             "data.views.load_size=72", f"model.backbone_kwargs={TINY}", "model.projector_dim=32",
                             "train.epochs=1", "train.global_batch=4", "tracking.wandb=disabled")
    assert code == 0, err
    config_map, job = docs
    # What the pods get: the ConfigMap mounted as a folder, the image's ARK_HOME, Secrets as env.
    recipes = tmp_path / "etc-ark-dist"
    recipes.mkdir()
    (recipes / "recipe.yaml").write_text(config_map["data"]["recipe.yaml"])
    port, dashboard = _free_port(), _free_port()
    env = {**os.environ, "ARK_HOME": str(ROOT), "ARK_RECIPE_DIR": str(recipes),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "k8s-test-token-" + "0" * 32}
    ray = [sys.executable, "-m", "ray.scripts.scripts"]
    temp = tempfile.mkdtemp(prefix="ray-k8s-", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    started = subprocess.run([*ray, "start", "--head", f"--port={port}", f"--dashboard-port={dashboard}",
                              "--num-cpus=2", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                              f"--temp-dir={temp}", "--disable-usage-stats"], env=env, capture_output=True, text=True,
                             timeout=120)
    assert started.returncode == 0, started.stdout[-2000:] + started.stderr[-2000:]
    try:
        # As KubeRay's submitter does: one shell line, `ray job submit ... -- <entrypoint>`.
        line = f"{shlex.join(ray)} job submit --address=http://127.0.0.1:{dashboard} -- {job['spec']['entrypoint']}"
        done = subprocess.run(["sh", "-c", line], env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0 and "succeeded" in done.stdout, done.stdout[-3000:] + done.stderr[-2000:]
    finally:
        subprocess.run([*ray, "stop", "--force"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(temp, ignore_errors=True)
    import boto3

    keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=s3_bucket, Prefix="runs/k8s-tiny/")["Contents"]]
    assert any(k.endswith("/teacher.safetensors") for k in keys) and "runs/k8s-tiny/metrics.jsonl" in keys

"""`python launch.py k8s render`: KubeRay manifests for a recipe and a size.

Three kinds, each one YAML file of Kubernetes documents:
  train    a ConfigMap holding the resolved recipe + a RayJob whose entrypoint is `launch.py train`
  sweep    the same for `launch.py tune` (a RayJob sized for the sweep's concurrent trials)
  cluster  a RayCluster for interactive use (`ray job submit`, notebooks), autoscaling its workers

Every pod runs the image of cluster/Containerfile as uid 1000. Pods get a memory-backed /dev/shm,
the S3 credentials and endpoint from a Secret (`--s3-secret`, keys AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY and optionally AWS_ENDPOINT_URL, AWS_DEFAULT_REGION) and the W&B key from an
optional Secret (`--wandb-secret`, key WANDB_API_KEY). Ray's token authentication is on (KubeRay
makes the token). GPU workers request `nvidia.com/gpu` and tolerate the usual GPU taint."""

from __future__ import annotations

import argparse
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from ark_dist.cluster import spread
from ark_dist.config import Config, to_dict
from ark_dist.configtree import load_config
from ark_dist.fs import write_atomic

RAY_VERSION = "2.60.0"
RECIPE_DIR = "/etc/ark-dist"  # where the ConfigMap's recipe.yaml is mounted on the head pod
KINDS = ("train", "sweep", "cluster")


@dataclass(frozen=True)
class Size:
    pods: int  # worker pods
    gpus_per_pod: int
    cpus_per_pod: int
    memory_per_pod: str
    shm_per_pod: str
    head_cpus: int
    head_memory: str


def size(cfg: Config, args: argparse.Namespace, *, concurrent: int) -> Size:
    pods, gpus, cpus = spread(cfg, hosts=args.pods, gpus_per_host=args.gpus_per_pod, concurrent=concurrent,
                              host="pod")
    cpus = args.cpus_per_pod or cpus
    memory = args.memory_per_pod or f"{max(8, cpus * 8)}Gi"
    shm = args.shm_per_pod or f"{max(2, (gpus or 1) * 8)}Gi"
    return Size(pods=pods, gpus_per_pod=gpus, cpus_per_pod=cpus, memory_per_pod=memory, shm_per_pod=shm,
                head_cpus=args.head_cpus, head_memory=args.head_memory)


def name_of(text: str) -> str:
    """A DNS-1123 name (what Kubernetes accepts for objects): lowercase, digits and '-', 40 at most
    (KubeRay appends suffixes to the pods' names)."""
    name = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")[:40].strip("-")
    if not name:
        raise ValueError(f"cannot make a Kubernetes name of {text!r}: use --name")
    return name


def container(role: str, args: argparse.Namespace, *, cpus: int, memory: str, gpus: int) -> dict:
    limits = {"cpu": str(cpus), "memory": memory, **({"nvidia.com/gpu": str(gpus)} if gpus else {})}
    env_from = [{"secretRef": {"name": args.s3_secret}},
                {"secretRef": {"name": args.wandb_secret, "optional": True}}]
    c = {"name": f"ray-{role}", "image": args.image, "imagePullPolicy": "IfNotPresent",
         "resources": {"requests": dict(limits), "limits": limits},
         "envFrom": env_from,
         "env": [{"name": "ARK_HOME", "value": "/opt/ark-dist"},
                 {"name": "RAY_USAGE_STATS_ENABLED", "value": "0"}],
         "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}],
         "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}}
    if role == "head":
        c["ports"] = [{"containerPort": 6379, "name": "gcs-server"}, {"containerPort": 8265, "name": "dashboard"},
                      {"containerPort": 10001, "name": "client"}]
    return c


def pod_template(role: str, args: argparse.Namespace, *, cpus: int, memory: str, gpus: int, shm: str,
                 recipe: str | None = None) -> dict:
    c = container(role, args, cpus=cpus, memory=memory, gpus=gpus)
    volumes = [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": shm}}]
    if recipe:
        c["volumeMounts"].append({"name": "recipe", "mountPath": RECIPE_DIR, "readOnly": True})
        volumes.append({"name": "recipe", "configMap": {"name": recipe}})
    spec = {"containers": [c], "volumes": volumes,
            "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000}}
    if args.service_account:
        spec["serviceAccountName"] = args.service_account
    if gpus:
        spec["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
        spec.update({"nodeSelector": dict(s.split("=", 1) for s in args.node_selector)} if args.node_selector else {})
    spec["tolerations"] = spec.get("tolerations", []) + [
        {"key": k, "operator": "Exists", "effect": "NoSchedule"} for k in args.toleration]
    if not spec["tolerations"]:
        del spec["tolerations"]
    if args.priority_class:
        spec["priorityClassName"] = args.priority_class
    return {"metadata": {"labels": {"app.kubernetes.io/name": "ark-dist", "app.kubernetes.io/component": role}},
            "spec": spec}


def ray_cluster_spec(s: Size, args: argparse.Namespace, *, recipe: str | None, autoscale: bool) -> dict:
    worker = {"groupName": "gpu" if s.gpus_per_pod else "cpu",
              "replicas": 0 if autoscale else s.pods, "minReplicas": 0 if autoscale else s.pods,
              "maxReplicas": s.pods,
              "rayStartParams": {},
              "template": pod_template("worker", args, cpus=s.cpus_per_pod, memory=s.memory_per_pod,
                                       gpus=s.gpus_per_pod, shm=s.shm_per_pod)}
    return {
        "rayVersion": RAY_VERSION,
        "enableInTreeAutoscaling": autoscale,
        "authOptions": {"mode": "token"},
        "headGroupSpec": {
            # The head runs the driver and Ray's control plane, never a training worker: no CPUs
            # for tasks, so every rank lands on a worker pod.
            "rayStartParams": {"num-cpus": "0", "dashboard-host": "0.0.0.0"},
            "template": pod_template("head", args, cpus=s.head_cpus, memory=s.head_memory, gpus=0,
                                     shm="2Gi", recipe=recipe)},
        "workerGroupSpecs": [worker],
    }


def entrypoint(command: str) -> str:
    """Runs on the head pod (and in `ray job submit`); $ARK_HOME and $ARK_RECIPE_DIR let the same line
    run outside the image."""
    return (f"python ${{ARK_HOME:-/opt/ark-dist}}/launch.py {command} "
            f"--config ${{ARK_RECIPE_DIR:-{RECIPE_DIR}}}/recipe.yaml")


def recipe_text(cfg: Config) -> str:
    from ark_dist.track.tracker import without_secrets

    return yaml.safe_dump(without_secrets(to_dict(cfg)), sort_keys=False)


def check_paths(cfg: Config, *, allow_local: bool) -> None:
    """Pods share no disk with this machine, and lose their own on restart: the store, the run
    storage and the pretrained weights live in object storage (or, with allow_local, on a volume
    mounted at the same absolute path in every pod)."""
    for key, value in (("data.store.url", cfg.data.store.url), ("train.storage_path", cfg.train.storage_path),
                       ("model.pretrained", cfg.model.pretrained)):
        if value is None or "://" in value:
            continue
        if not allow_local:
            raise ValueError(f"{key}={value!r} is a local path, which the pods cannot see: use s3:// "
                             f"(or --allow-local-paths with a volume mounted at that path in every pod)")
        if not value.startswith("/"):
            raise ValueError(f"{key}={value!r}: a path on a shared volume must be absolute")


def render(cfg: Config, kind: str, args: argparse.Namespace) -> list[dict]:
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}: one of {', '.join(KINDS)}")
    check_paths(cfg, allow_local=args.allow_local_paths)
    concurrent = max(cfg.tune.max_concurrent_trials, 1) if kind == "sweep" else 1
    s = size(cfg, args, concurrent=concurrent)
    base = name_of(args.name or (cfg.tune.name if kind == "sweep" else cfg.train.name))
    labels = {"app.kubernetes.io/name": "ark-dist", "app.kubernetes.io/instance": base}
    meta = {"namespace": args.namespace} if args.namespace else {}
    if kind == "cluster":
        return [{"apiVersion": "ray.io/v1", "kind": "RayCluster",
                 "metadata": {"name": base, **meta, "labels": labels},
                 "spec": ray_cluster_spec(s, args, recipe=None, autoscale=True)}]
    recipe = f"{base}-recipe"
    config_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": recipe, **meta, "labels": labels},
                  "data": {"recipe.yaml": recipe_text(cfg)}}
    job = {"apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": {"name": base, **meta, "labels": labels},
           "spec": {
               "entrypoint": entrypoint("tune" if kind == "sweep" else "train"),
               # The same run name in the same storage resumes: a retried submission continues.
               "backoffLimit": args.retries,
               "shutdownAfterJobFinishes": True,
               "ttlSecondsAfterFinished": args.ttl,
               "submissionMode": "K8sJobMode",
               "rayClusterSpec": ray_cluster_spec(s, args, recipe=recipe, autoscale=False)}}
    if args.deadline:
        job["spec"]["activeDeadlineSeconds"] = args.deadline
    return [config_map, job]


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the recipe in the ConfigMap) as literal blocks, readable in the file."""


_Dumper.add_representer(str, lambda d, s: d.represent_scalar("tag:yaml.org,2002:str", s, style="|" if "\n" in s else None))


def dump(docs: list[dict], header: str) -> str:
    return header + "".join("---\n" + yaml.dump(d, Dumper=_Dumper, sort_keys=False) for d in docs)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="launch.py k8s render", description=__doc__.splitlines()[0])
    p.add_argument("kind", choices=KINDS, help="train: a RayJob; sweep: a RayJob running `tune`; cluster: a RayCluster")
    p.add_argument("--config", required=True, help="the recipe, e.g. configs/ark6.yaml")
    p.add_argument("overrides", nargs="*", help="dotted.key=value, as for `launch.py train`")
    p.add_argument("--image", default="registry.example.com/ark-dist:0.1.0", help="the image of cluster/Containerfile")
    p.add_argument("--name", help="object name (default: train.name, or tune.name for a sweep)")
    p.add_argument("--namespace")
    p.add_argument("--pods", type=int, help="worker pods (default: enough for engine.num_workers x concurrent trials)")
    p.add_argument("--gpus-per-pod", type=int, help="GPUs per worker pod (default: min(workers, 8))")
    p.add_argument("--cpus-per-pod", type=int, help="default: engine.cpus_per_worker per GPU (or per CPU worker)")
    p.add_argument("--memory-per-pod", help="default: 8Gi per CPU")
    p.add_argument("--shm-per-pod", help="the memory-backed /dev/shm (default: 8Gi per GPU, at least 2Gi)")
    p.add_argument("--head-cpus", type=int, default=4)
    p.add_argument("--head-memory", default="16Gi")
    p.add_argument("--s3-secret", default="ark-dist-s3", help="Secret with AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY "
                   "(and AWS_ENDPOINT_URL for MinIO/Ceph)")
    p.add_argument("--wandb-secret", default="ark-dist-wandb", help="optional Secret with WANDB_API_KEY")
    p.add_argument("--service-account")
    p.add_argument("--priority-class")
    p.add_argument("--node-selector", action="append", default=[], help="key=value for GPU pods, repeatable")
    p.add_argument("--toleration", action="append", default=[], help="another NoSchedule taint key to tolerate")
    p.add_argument("--retries", type=int, default=2, help="RayJob backoffLimit: resubmissions after a failure")
    p.add_argument("--ttl", type=int, default=600, help="seconds the finished job's cluster is kept for its logs")
    p.add_argument("--deadline", type=int, help="activeDeadlineSeconds of the RayJob")
    p.add_argument("--allow-local-paths", action="store_true",
                   help="accept absolute local paths for the store, run storage and weights (a shared volume)")
    p.add_argument("--out", help="file to write (default: print to stdout)")
    return p


def main(argv: list[str]) -> int:
    if argv[:1] != ["render"]:
        print("usage: python launch.py k8s render {train,sweep,cluster} --config FILE [key=value ...] [options]",
              file=sys.stderr)
        return 2
    args = parser().parse_intermixed_args(argv[1:])
    try:
        cfg = load_config(Config, Path(args.config), args.overrides)  # paths as written, not made absolute here
        docs = render(cfg, args.kind, args)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    shown = [a for i, a in enumerate(argv) if a != "--out" and (i == 0 or argv[i - 1] != "--out")
             and not a.startswith("--out=")]
    command = "python launch.py k8s " + shlex.join(shown)
    text = dump(docs, f"# Rendered by `{command}`; edit the recipe and render again rather than editing this.\n")
    if args.out:
        write_atomic(args.out, text.encode())
        print(f"wrote {args.out}: {', '.join(d['kind'] + '/' + d['metadata']['name'] for d in docs)}")
    else:
        sys.stdout.write(text)
    return 0

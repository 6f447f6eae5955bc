"""cluster/Containerfile: what can be checked without building it here (no registry, no daemon).
It builds its Python environment the way CI does (the runtime stack only), runs as non-root and
carries no credentials. And the split of the pinned stack: runtime (requirements.txt, what
`pip install ark-dist` pulls) and test tools (requirements-dev.txt, the `dev` extra)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONTAINERFILE = (ROOT / "cluster" / "Containerfile").read_text()


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(line for line in CONTAINERFILE.splitlines() if not line.lstrip().startswith("#")))
    return [(m.group(1).upper(), m.group(2)) for m in re.finditer(r"^\s*([A-Za-z]+)\s+(.*)$", text, flags=re.M)]


TEST_TOOLS = {"pytest", "pytest-timeout", "moto", "kubernetes-validate"}


def pip_install_args(tmp_path: Path, *options: str) -> list[str]:
    """What cluster/pip-install.sh hands pip: run it with a stand-in python that records its arguments."""
    fake = tmp_path / "python"
    log = tmp_path / "args"
    fake.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {log}\n')
    fake.chmod(0o755)
    subprocess.run(["bash", str(ROOT / "cluster" / "pip-install.sh"), str(fake), *options], check=True)
    return [a.replace(str(ROOT), "ROOT") for a in log.read_text().splitlines()]


def test_the_image_and_ci_install_python_dependencies_with_one_script_and_the_same_files(tmp_path):
    runs = [args for op, args in instructions() if op == "RUN"]
    copies = [args for op, args in instructions() if op == "COPY"]
    installs = [r for r in runs if "cluster/pip-install.sh" in r]
    assert installs and not any("--dev" in r for r in installs), installs  # the image: the runtime only
    assert not any(re.search(r"pip3? install|uv pip|poetry|conda install", r) for r in runs), runs
    assert any("requirements.txt" in c and "constraints.txt" in c for c in copies)
    makefile = (ROOT / "Makefile").read_text()
    assert "pip install" not in makefile
    assert re.search(r"^\s+bash cluster/pip-install\.sh \$\(PY\)$", makefile, flags=re.M)  # setup, demo
    assert re.search(r"^\s+bash cluster/pip-install\.sh \$\(PY\) --dev$", makefile, flags=re.M)  # test
    # The same script, as the image and `make setup` run it, and as `make test` runs it.
    assert pip_install_args(tmp_path) == ["-m", "pip", "install", "-q", "--disable-pip-version-check",
                                          "-r", "ROOT/requirements.txt", "-c", "ROOT/constraints.txt"]
    assert pip_install_args(tmp_path, "--dev") == ["-m", "pip", "install", "-q", "--disable-pip-version-check",
                                                   "-r", "ROOT/requirements.txt", "-r", "ROOT/requirements-dev.txt",
                                                   "-c", "ROOT/constraints.txt"]
    with pytest.raises(subprocess.CalledProcessError):
        pip_install_args(tmp_path, "--devv")


def test_make_installs_the_test_tools_for_the_tests_only_and_reinstalls_when_any_pinned_file_changes():
    makefile = (ROOT / "Makefile").read_text()
    listed = re.search(r"^REQUIREMENTS := (.*)$", makefile, flags=re.M).group(1).split()
    pinned = {p.name for p in ROOT.glob("requirements*.txt")} | {"constraints.txt"}
    assert pinned <= set(listed), (pinned, listed)
    assert re.search(r"^HASH := \$\(shell cat \$\(REQUIREMENTS\) ", makefile, flags=re.M)
    for stamp in ("STAMP", "DEV_STAMP"):  # both stamps: named by the hash, made from every file
        assert re.search(rf"^{stamp} := \$\(VENV\)/\.installed-\w+-\$\(HASH\)$", makefile, flags=re.M), stamp
        assert re.search(rf"^\$\({stamp}\): \$\(REQUIREMENTS\)$", makefile, flags=re.M), stamp
    rules = dict(re.findall(r"^([\w-]+):(.*)$", makefile, flags=re.M))
    assert "$(DEV_STAMP)" in rules["test"] and "$(DEV_STAMP)" in rules["test-gpu"]
    for target in ("setup", "demo", "bench-shards"):
        assert rules[target].split() == ["$(STAMP)"], (target, rules[target])


def _normalised(requirement: str) -> str:
    """The project name of a requirement, normalised (PEP 503): `moto[server]==5.2.5` -> `moto`."""
    return re.sub(r"[-_.]+", "-", re.split(r"[\[=<>;\s]", requirement.strip())[0]).lower()


def _requirements(name: str) -> dict[str, str]:
    """{normalised name: pinned version} of a requirements file (only `name[extras]==version` lines)."""
    pins = {}
    for line in (ROOT / name).read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            match = re.fullmatch(r"([A-Za-z0-9_.-]+)(\[[^\]]*\])?==(\S+)", line)
            assert match, f"{name}: not pinned: {line}"
            pins[_normalised(match.group(1))] = match.group(3)
    return pins


def test_the_runtime_stack_carries_no_test_tools_and_every_pin_is_frozen_in_the_constraints():
    runtime, dev, frozen = (_requirements(n) for n in ("requirements.txt", "requirements-dev.txt", "constraints.txt"))
    assert not TEST_TOOLS & runtime.keys(), TEST_TOOLS & runtime.keys()
    assert TEST_TOOLS <= dev.keys(), TEST_TOOLS - dev.keys()
    for name, version in {**runtime, **dev}.items():
        assert frozen.get(name) == version, (name, version, frozen.get(name))
    for name in ("scipy", "joblib", "threadpoolctl"):  # scikit-learn's (a runtime need: reuse) are frozen too
        assert name in frozen, name


def test_the_package_metadata_requires_the_runtime_stack_and_offers_the_test_tools_as_the_dev_extra(tmp_path):
    """The metadata `pip install ark-dist` reads, built by setuptools from pyproject.toml."""
    for name in ("pyproject.toml", "requirements.txt", "requirements-dev.txt", "README.md"):
        shutil.copy(ROOT / name, tmp_path / name)
    out = tmp_path / "meta"
    out.mkdir()
    code = ("import sys; from setuptools import build_meta as b; "
            "print(b.prepare_metadata_for_build_wheel(sys.argv[1]))")
    built = subprocess.run([sys.executable, "-c", code, str(out)], cwd=tmp_path, capture_output=True, text=True,
                           env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert built.returncode == 0, built.stderr[-2000:]
    metadata = (out / built.stdout.split()[-1] / "METADATA").read_text()
    requires = re.findall(r"^Requires-Dist: (.*)$", metadata, flags=re.M)
    plain = {r for r in requires if ";" not in r}
    extra = {r.split(";")[0].strip() for r in requires if 'extra == "dev"' in r}
    assert {_normalised(r) for r in plain} == _requirements("requirements.txt").keys()
    assert {_normalised(r) for r in extra} == _requirements("requirements-dev.txt").keys()
    assert "torch==2.14.1" in plain and "pytest==9.2.0" in extra
    assert not TEST_TOOLS & {_normalised(r) for r in plain}
    assert re.search(r"^Provides-Extra: dev$", metadata, flags=re.M)


def test_the_base_has_the_cuda_of_the_pinned_torch_and_a_compiler_for_deepspeed():
    import torch

    base = re.search(r"ARG CUDA_IMAGE=(\S+)", CONTAINERFILE).group(1)
    assert re.search(r"nvidia/cuda:\d+\.\d+\.\d+-.*devel", base), base  # devel: nvcc for DeepSpeed's JIT ops
    assert base.split(":")[1].startswith(torch.version.cuda + "."), (base, torch.version.cuda)
    assert "torch==2.14.1" in (ROOT / "constraints.txt").read_text()
    assert re.search(r"build-essential", CONTAINERFILE) and "ninja-build" in CONTAINERFILE
    assert "python3.11" in CONTAINERFILE  # the Python CI runs


def test_the_image_runs_as_non_root_and_holds_no_credentials():
    users = [args.strip() for op, args in instructions() if op == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    for op, args in instructions():
        if op in ("ENV", "ARG"):
            assert not re.search(r"KEY|SECRET|TOKEN|PASSWORD|CREDENTIAL", args, flags=re.I), args
    ignored = (ROOT / ".dockerignore").read_text().split()
    for path in (".git", ".venv", "wandb", "out", "runs", ".aws", ".netrc", ".env"):
        assert path in ignored, path

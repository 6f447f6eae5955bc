"""cluster/Containerfile: what can be checked without building it here (no registry, no daemon).
It builds its Python environment the way CI does, runs as non-root and carries no credentials."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONTAINERFILE = (ROOT / "cluster" / "Containerfile").read_text()


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(line for line in CONTAINERFILE.splitlines() if not line.lstrip().startswith("#")))
    return [(m.group(1).upper(), m.group(2)) for m in re.finditer(r"^\s*([A-Za-z]+)\s+(.*)$", text, flags=re.M)]


def test_the_image_and_ci_install_python_dependencies_with_one_script_and_the_same_files():
    runs = [args for op, args in instructions() if op == "RUN"]
    copies = [args for op, args in instructions() if op == "COPY"]
    assert any("cluster/pip-install.sh" in r for r in runs)
    assert not any(re.search(r"pip3? install|uv pip|poetry|conda install", r) for r in runs), runs
    assert any("requirements.txt" in c and "constraints.txt" in c for c in copies)
    makefile = (ROOT / "Makefile").read_text()
    assert "bash cluster/pip-install.sh $(PY)" in makefile and "pip install" not in makefile
    script = (ROOT / "cluster" / "pip-install.sh").read_text()
    assert '-r "$root/requirements.txt" -c "$root/constraints.txt"' in script


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

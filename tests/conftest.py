"""Shared fixtures: the repository root, the tiny profile, and small synthetic datasets."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fly64study.contract import Dataset
from fly64study.design import Params, load_params

REPO = Path(__file__).resolve().parents[1]
# what a temporary copy of the project needs to run the pipeline (not data/, not .venv/)
COPY = ["dvc.yaml", "profiles", "stages", "src", "inputs", "Makefile", ".dvcignore", ".gitignore", ".dvc/config",
        ".dvc/.gitignore"]


def project_env(root: Path) -> dict:
    """Environment for commands in a project copy: its own package, offline DVC, a git identity."""
    env = dict(os.environ)
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        PYTHONPATH=str(root / "src"),  # the copy's package, not the checkout's
        DVC_NO_ANALYTICS="1",
        DVC_STUDIO_OFFLINE="1",
        DVC_SITE_CACHE_DIR=str(root / ".site_cache"),
        GIT_AUTHOR_NAME="test", GIT_AUTHOR_EMAIL="test@example.org",
        GIT_COMMITTER_NAME="test", GIT_COMMITTER_EMAIL="test@example.org",
    )
    return env


def sh(root: Path, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=root, env=project_env(root), capture_output=True, text=True)
    if check and proc.returncode:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def copy_project(root: Path, profile: str = "tiny") -> Path:
    """A copy of the project in a new git repository, with ``profile`` as params.yaml."""
    for rel in COPY:
        src, dst = REPO / rel, root / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(src, dst)
    shutil.copy2(root / "profiles" / f"{profile}.yaml", root / "params.yaml")
    sh(root, "git", "init", "-q")
    sh(root, "git", "add", "-A")
    sh(root, "git", "commit", "-qm", f"{profile} profile")
    return root


@pytest.fixture(scope="session")
def tiny() -> Params:
    return load_params(REPO / "profiles" / "tiny.yaml")


def small_dataset(n: int = 6, N: int = 16, M: int = 40, seed: int = 0) -> Dataset:
    """A contract-valid dataset of random arrays (no physics), for contract and I/O tests."""
    rng = np.random.default_rng(seed)
    meta = {"nphotons": 1000.0, "N": N, "intensity_scale": 2.0, "seeds": {"simulation": seed},
            "source": {"source": "test"}, "transformations": []}
    return Dataset(
        diffraction=rng.random((n, N, N)).astype(np.float32),
        probeGuess=(rng.random((N, N)) + 1j * rng.random((N, N))).astype(np.complex64),
        objectGuess=np.exp(1j * rng.random((M, M))).astype(np.complex64),
        xcoords=rng.uniform(N / 2, M - N / 2, n),
        ycoords=rng.uniform(N / 2, M - N / 2, n),
        metadata=json.loads(json.dumps(meta)),
        Y=np.ones((n, N, N), dtype=np.complex64),
    )

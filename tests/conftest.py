"""Shared fixtures: the repository root, the tiny profile, and small synthetic datasets."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fly64study.contract import Dataset
from fly64study.design import Params, load_params

REPO = Path(__file__).resolve().parents[1]


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

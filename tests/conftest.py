"""Shared fixtures. ETTh1 is located, never copied: $DIFFSAMPLE_ETT_DIR, else ../shared/data/ETT-small
beside the repository. Missing data skips locally but fails loudly where DIFFSAMPLE_REQUIRE_DATA=1
(set by .ci/run) or CI is set."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

# One intra-op thread: the tests check values, not speed, and torch's OpenMP workers spin for
# cores they share with whatever else the machine runs (on a busy 2-core machine the suite went
# from 15 s to 6 minutes with 2 threads). DIFFSAMPLE_TEST_THREADS overrides.
_THREADS = os.environ.get("DIFFSAMPLE_TEST_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", _THREADS)  # the same for the commands the tests start
torch.set_num_threads(int(_THREADS))


def ett_dir_candidates() -> list[Path]:
    env = os.environ.get("DIFFSAMPLE_ETT_DIR")
    found = [Path(env)] if env else []
    return [*found, REPO.parent / "shared" / "data" / "ETT-small"]


@pytest.fixture(scope="session")
def etth1_path() -> Path:
    for d in ett_dir_candidates():
        if (d / "ETTh1.csv").is_file():
            return d / "ETTh1.csv"
    where = ", ".join(str(d) for d in ett_dir_candidates())
    if os.environ.get("DIFFSAMPLE_REQUIRE_DATA") == "1" or os.environ.get("CI"):
        pytest.fail(
            f"ETTh1.csv not found (looked in {where}); set DIFFSAMPLE_ETT_DIR", pytrace=False
        )
    pytest.skip(f"ETTh1.csv not found (looked in {where}); set DIFFSAMPLE_ETT_DIR")


@pytest.fixture(autouse=True)
def _seed_everything():
    """Every test starts from the same global RNG state (tests still pass explicit seeds)."""
    torch.manual_seed(0)
    yield

"""Shared test set-up: offline, single-threaded torch (tiny CPU runs are faster and steadier so)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
TINY_FLUX = REPO / "data" / "01_raw" / "tiny" / "flux"


@pytest.fixture
def tiny_flux_dir() -> Path:
    """The committed tiny random-weight Flux pipeline folder."""
    return TINY_FLUX

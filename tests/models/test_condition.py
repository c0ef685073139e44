"""The LQ condition: training, restoration and evaluation hand the adapter the same pixels, also at odd sizes."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from fluxir.models.controlled_flux import lq_condition
from fluxir.restoration.sampler import output_size
from fluxir.training.data import load_pair_pixels, to_unit

from support import restore_config


@pytest.mark.parametrize(("lq_size", "scale"), [((7, 5), 4), ((9, 13), 2), ((1, 3), 4)])
def test_training_and_restoration_condition_are_equal(tmp_path, lq_size, scale):
    rng = np.random.default_rng(0)
    h, w = lq_size
    lq = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    hq = rng.integers(0, 256, (h * scale, w * scale, 3), dtype=np.uint8)
    Image.fromarray(lq).save(tmp_path / "lq.png")
    Image.fromarray(hq).save(tmp_path / "hq.png")
    row = SimpleNamespace(hq_path=str(tmp_path / "hq.png"), lq_path=str(tmp_path / "lq.png"))

    hq_t, trained_on = load_pair_pixels(row, scale)  # what training encodes, (3, H, W) in [-1, 1]
    # restoration (and evaluation, which restores with the same Restorer) at the same scale
    height, width = output_size(h, w, restore_config(scale=scale))
    restored_from = to_unit(lq_condition(lq, height, width))
    assert (height, width) == hq.shape[:2] == tuple(trained_on.shape[1:])
    assert torch.equal(trained_on, restored_from)  # bit for bit, not within a tolerance
    assert torch.equal(hq_t, to_unit(hq))


def test_condition_is_bicubic_and_rounded():
    """A constant image stays constant (the kernel sums to 1); a ramp is interpolated, not repeated."""
    flat = np.full((5, 7, 3), 200, np.uint8)
    assert (lq_condition(flat, 20, 28) == 200).all()
    ramp = np.repeat(np.repeat(np.arange(0, 250, 50, dtype=np.uint8)[None, :, None], 3, 2), 3, 0)  # (3, 5, 3)
    up = lq_condition(ramp, 12, 20)
    assert up.dtype == np.uint8 and up.shape == (12, 20, 3)
    assert len(np.unique(up[0, :, 0])) > 5  # new values between the columns
    assert lq_condition(ramp, 3, 5) is ramp  # same size: the image itself

"""Draw docs/img/fidelity_grid.png: restore.control_scale (rows) x restore.start_t (columns) on the tiny models.

    PYTHONPATH=src .venv/bin/python docs/img/fidelity_grid.py

The tiny Flux and adapter have random weights (the adapter's zero-initialised control layers are given
small random values so that it responds to the LQ): the grid shows the mechanics only, how the two
controls move the output between the LQ and what Flux generates, never restoration quality.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from fluxir.models.adapter import FluxIRAdapter
from fluxir.models.loading import load_pipeline
from fluxir.parameters.config import load_params
from fluxir.restoration.files import split_params
from fluxir.restoration.sampler import Restorer

REPO = Path(__file__).resolve().parents[2]
CONTROL_SCALES = (0.0, 0.5, 1.0, 2.0)
START_TS = (1.0, 0.7, 0.4, 0.1)
CELL, LABEL = 128, 18


def main() -> None:
    torch.set_num_threads(1)
    pipe = load_pipeline(str(REPO / "data/01_raw/tiny/flux"), dtype="float32", device="cpu")
    params = load_params("base", [], REPO)  # rank, guidance and the restore settings: conf/base's
    torch.manual_seed(0)
    adapter = FluxIRAdapter.from_flux(pipe.transformer, **params["train"]["adapter"], text_seq_len=8)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in [adapter.input_proj, *[se.excite for se in adapter.se_z]]:
            module.weight.copy_(0.2 * torch.randn(module.weight.shape, generator=gen))
    yy, xx = np.mgrid[0:32, 0:32] / 31.0  # a smooth LQ: colour ramps and a disc
    disc = ((yy - 0.5) ** 2 + (xx - 0.5) ** 2 < 0.08).astype(float)
    lq = (np.stack([xx, yy, disc], axis=2) * 255).astype(np.uint8)
    small = {"steps": 8, "dtype": "float32", "device": "cpu", "tile_size": None, "vae_tile_size": None}
    restorer = Restorer.from_pipeline(pipe, adapter, split_params({**params["restore"], **small})[1])
    width = LABEL * 4 + CELL * (len(START_TS) + 1)
    grid = Image.new("RGB", (width, LABEL + CELL * len(CONTROL_SCALES)), "white")
    draw = ImageDraw.Draw(grid)
    draw.text((LABEL * 4 + 4, 2), "LQ (bicubic)", fill="black")
    for j, start_t in enumerate(START_TS):
        draw.text((LABEL * 4 + CELL * (j + 1) + 4, 2), f"start_t {start_t}", fill="black")
    for i, scale in enumerate(CONTROL_SCALES):
        y = LABEL + CELL * i
        draw.text((2, y + CELL // 2), f"control\n{scale}", fill="black")
        grid.paste(Image.fromarray(lq).resize((CELL, CELL), Image.Resampling.BICUBIC), (LABEL * 4, y))
        for j, start_t in enumerate(START_TS):
            restorer.config.control_scale, restorer.config.start_t = scale, start_t
            grid.paste(Image.fromarray(restorer.restore(lq)), (LABEL * 4 + CELL * (j + 1), y))
    grid.save(Path(__file__).with_name("fidelity_grid.png"))


if __name__ == "__main__":
    main()

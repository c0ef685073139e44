"""The LQ condition the adapter sees (paper Sec. 3.2): the LQ image resized bicubic to the output size.

Training (``fluxir.training.data``), restoration and evaluation (``fluxir.restoration.sampler``) and the
training's validation grids all take it from :func:`lq_condition`, so the adapter is trained on exactly
the input it restores from: torch bicubic (a = -0.75, align_corners=False), antialiased when shrinking,
rounded to uint8 (restoration also uses it as the colour reference, an image).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def lq_condition(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """(h, w, 3) uint8 LQ -> (height, width, 3) uint8 condition: torch bicubic, antialiased when shrinking."""
    if image.shape[:2] == (height, width):
        return image

    x = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float()  # (1, 3, h, w) in [0, 255]
    shrink = height < image.shape[0] or width < image.shape[1]
    x = F.interpolate(x, size=(height, width), mode="bicubic", align_corners=False, antialias=shrink)
    return x[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()

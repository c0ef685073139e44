"""Colour fix: give a restored image the low-frequency colour of a reference (the upsampled LQ).

Diffusion restorers drift in colour; SUPIR, SeeSR, StableSR and DiffBIR correct it after decoding with
one of two methods, written here as in StableSR's ``scripts/wavelet_color_fix.py`` (from Li Yi's
sd-webui-stablesr):

- ``wavelet``: a 5-level a-trous wavelet decomposition with the 3x3 kernel [1 2 1]^T [1 2 1] / 16 at
  dilations 1, 2, 4, 8, 16 (replicate padding). The result is the restored image's high frequencies
  (image - low) plus the reference's lowest band: ``content - low(content) + low(reference)``. Colour
  and illumination follow the reference at scales above ~32 px; detail stays the restored one.
- ``adain``: adaptive instance normalisation: each channel of the restored image is shifted and scaled
  to the reference's mean and standard deviation (global statistics, unbiased variance + 1e-5).
- ``none``: unchanged.

Large images: the low band of a pixel depends on pixels at most 1 + 2 + 4 + 8 + 16 = 31 rows away, so the
wavelet fix runs in horizontal strips of about 0.26 megapixels with a 32-row halo: exactly the whole-image
result, holding only one strip in float32. AdaIN's statistics are accumulated strip by strip too.
Values are in [0, 1]; the uint8 result is rounded (StableSR's ToPILImage truncates).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from fluxir.io.images import check_rgb_uint8

COLOR_FIX_METHODS = ("wavelet", "adain", "none")
LEVELS = 5
HALO = 2**LEVELS  # > 1 + 2 + 4 + 8 + 16, the reach of the lowest band
STRIP_PIXELS = 1 << 18  # pixels per strip (rows = this / width, at least 2 * HALO)


def wavelet_blur(image: Tensor, radius: int) -> Tensor:
    """(B, C, H, W) -> (B, C, H, W): the 3x3 binomial kernel at dilation ``radius``, replicate padding."""
    kernel = torch.tensor(
        [[0.0625, 0.125, 0.0625], [0.125, 0.25, 0.125], [0.0625, 0.125, 0.0625]], dtype=image.dtype, device=image.device
    )
    channels = image.shape[1]
    kernel = kernel[None, None].repeat(channels, 1, 1, 1)  # (C, 1, 3, 3), one filter per channel
    image = F.pad(image, (radius, radius, radius, radius), mode="replicate")
    return F.conv2d(image, kernel, groups=channels, dilation=radius)


def wavelet_decomposition(image: Tensor, levels: int = LEVELS) -> tuple[Tensor, Tensor]:
    """(high, low): ``low`` is the image after ``levels`` blurs at radius 1, 2, 4, ...; high = image - low."""
    low = image
    for i in range(levels):
        low = wavelet_blur(low, 2**i)
    return image - low, low


def wavelet_reconstruction(content: Tensor, style: Tensor) -> Tensor:
    """content's high frequencies + style's low frequencies, both (B, C, H, W)."""
    content_high, _ = wavelet_decomposition(content)
    _, style_low = wavelet_decomposition(style)
    return content_high + style_low


def color_fix(
    image: np.ndarray, reference: np.ndarray, method: str = "wavelet", strip: int | None = None
) -> np.ndarray:
    """(H, W, 3) uint8 restored image with the colour of ``reference`` (same shape), as uint8.

    Works in strips of ``strip`` rows (default: about 0.26 megapixels each), so memory stays bounded for any
    image size.
    """
    if method not in COLOR_FIX_METHODS:
        raise ValueError(f"colour fix must be one of {COLOR_FIX_METHODS}, got {method!r}")
    for name, arr in (("image", image), ("reference", reference)):
        check_rgb_uint8(arr, f"color_fix takes it as its {name}")
    if image.shape != reference.shape:
        raise ValueError(f"color_fix: image {image.shape} and reference {reference.shape} must have the same shape")
    if method == "none":
        return image
    strip = strip or max(2 * HALO, STRIP_PIXELS // image.shape[1])
    if method == "adain":
        return _adain_strips(image, reference, strip)
    return _wavelet_strips(image, reference, strip)


def _to_tensor(rows: np.ndarray) -> Tensor:
    return torch.from_numpy(np.array(rows)).permute(2, 0, 1)[None].float() / 255.0  # (1, C, h, W)


def _to_uint8(x: Tensor) -> np.ndarray:
    return (x[0].permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def _wavelet_strips(image: np.ndarray, reference: np.ndarray, strip: int) -> np.ndarray:
    height = image.shape[0]
    out = np.empty_like(image)
    for r0 in range(0, height, strip):
        r1 = min(height, r0 + strip)
        h0, h1 = max(0, r0 - HALO), min(height, r1 + HALO)  # strip plus halo: exact for rows r0..r1
        fixed = wavelet_reconstruction(_to_tensor(image[h0:h1]), _to_tensor(reference[h0:h1]))
        out[r0:r1] = _to_uint8(fixed[:, :, r0 - h0 : r1 - h0])
    return out


def _channel_stats(image: np.ndarray, strip: int, eps: float = 1e-5) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std (unbiased variance + eps) over the whole image, in [0, 1] units."""
    n = image.shape[0] * image.shape[1]
    s = np.zeros(image.shape[2])
    s2 = np.zeros(image.shape[2])
    for r0 in range(0, image.shape[0], strip):
        rows = image[r0 : r0 + strip].reshape(-1, image.shape[2]).astype(np.float64) / 255.0
        s += rows.sum(0)
        s2 += (rows**2).sum(0)
    mean = s / n
    var = (s2 - n * mean**2) / max(n - 1, 1)
    return mean, np.sqrt(np.maximum(var, 0) + eps)


def _adain_strips(image: np.ndarray, reference: np.ndarray, strip: int) -> np.ndarray:
    c_mean, c_std = _channel_stats(image, strip)
    s_mean, s_std = _channel_stats(reference, strip)
    gain = (s_std / c_std).astype(np.float32)
    bias = (s_mean - c_mean * s_std / c_std).astype(np.float32)
    out = np.empty_like(image)
    for r0 in range(0, image.shape[0], strip):
        x = image[r0 : r0 + strip].astype(np.float32) / 255.0
        out[r0 : r0 + strip] = np.clip(np.round((x * gain + bias) * 255.0), 0, 255).astype(np.uint8)
    return out

"""Colour fix: low-frequency colour comes from the reference, high-frequency detail stays the image's."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageFilter

from fluxir.restoration.sampler import color_fix

SIZE = 192


def _smooth_field(seed: int) -> np.ndarray:
    """A smooth colour field (variation only at scales >= ~60 px), float (SIZE, SIZE, 3) in ~[40, 215]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    channels = []
    for _ in range(3):
        fy, fx, py, px = rng.uniform(0.5, 1.5, 2).tolist() + rng.uniform(0, 2 * np.pi, 2).tolist()
        channels.append(
            127 + 45 * np.sin(2 * np.pi * fy * yy + py) * np.cos(2 * np.pi * fx * xx + px) + rng.uniform(-40, 40)
        )
    return np.stack(channels, -1)


def _texture(seed: int, amplitude: float = 25) -> np.ndarray:
    """Fine detail (pixel-level noise), float (SIZE, SIZE, 3), zero mean."""
    return np.random.default_rng(seed).normal(0, amplitude, (SIZE, SIZE, 1)).repeat(3, axis=2)


def _u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def _low(img: np.ndarray) -> np.ndarray:
    """Low-frequency colour, measured independently of the fix: means of 32x32 blocks."""
    return img.astype(float).reshape(SIZE // 32, 32, SIZE // 32, 32, 3).mean(axis=(1, 3))


def _high(img: np.ndarray) -> np.ndarray:
    """High-frequency detail: image minus a Gaussian blur (PIL, radius 3)."""
    blurred = np.asarray(Image.fromarray(img).filter(ImageFilter.GaussianBlur(3))).astype(float)
    return img.astype(float) - blurred


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


@pytest.fixture(scope="module")
def pair() -> tuple[np.ndarray, np.ndarray]:
    """(restored-like image with wrong colours, reference with the right colours), different details."""
    image = _u8(_smooth_field(1) + _texture(2))
    reference = _u8(_smooth_field(3) + _texture(4, amplitude=8))
    return image, reference


def test_wavelet_moves_low_frequencies_to_the_reference_and_keeps_detail(pair):
    image, reference = pair
    fixed = color_fix(image, reference, "wavelet")
    before = np.abs(_low(image) - _low(reference)).mean()
    after = np.abs(_low(fixed) - _low(reference)).mean()
    assert before > 20, "the test pair must start with clearly different colours"
    assert after < 0.2 * before and after < 6, (before, after)  # measured: 28.3 -> 4.0 grey levels
    assert _corr(_high(fixed), _high(image)) > 0.9, "the image's detail is kept"
    assert abs(_corr(_high(fixed), _high(reference))) < 0.3, "the reference's detail is not copied in"


def test_adain_matches_channel_statistics_and_keeps_detail(pair):
    image, reference = pair
    fixed = color_fix(image, reference, "adain")
    for c in range(3):
        assert fixed[..., c].mean() == pytest.approx(reference[..., c].mean(), abs=1.0)
        assert fixed[..., c].std() == pytest.approx(reference[..., c].std(), abs=1.0)
    before = np.abs(image.reshape(-1, 3).mean(0) - reference.reshape(-1, 3).mean(0)).mean()
    after = np.abs(fixed.reshape(-1, 3).mean(0) - reference.reshape(-1, 3).mean(0)).mean()
    assert after < 0.1 * before
    assert _corr(_high(fixed), _high(image)) > 0.95


def test_none_is_identity_and_constant_images_take_the_reference_colour(pair):
    image, reference = pair
    assert color_fix(image, reference, "none") is image
    flat, target = np.full((40, 50, 3), 200, np.uint8), np.full((40, 50, 3), (10, 120, 240), np.uint8)
    assert (color_fix(flat, target, "wavelet") == target).all()
    assert np.abs(color_fix(flat, target, "adain").astype(int) - target).max() <= 1


@pytest.mark.parametrize("method", ["wavelet", "adain"])
def test_strips_give_the_whole_image_result(pair, method):
    image, reference = pair
    whole = color_fix(image, reference, method, strip=10_000)
    strips = color_fix(image, reference, method, strip=40)
    assert np.abs(whole.astype(int) - strips).max() <= (0 if method == "wavelet" else 1)


def test_bad_inputs_are_refused(pair):
    image, reference = pair
    with pytest.raises(ValueError, match="same shape"):
        color_fix(image, reference[:-1])
    with pytest.raises(ValueError, match="uint8"):
        color_fix(image.astype(float), reference)
    with pytest.raises(ValueError, match="must be one of"):
        color_fix(image, reference, "histogram")

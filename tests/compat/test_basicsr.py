"""basicsr 1.4.2 on a torchvision without ``transforms.functional_tensor``: it imports and works."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torchvision

from fluxir.compat import import_basicsr

basicsr = import_basicsr()

from basicsr.data.degradations import (  # noqa: E402
    circular_lowpass_kernel,
    random_add_gaussian_noise_pt,
    random_add_poisson_noise_pt,
    random_mixed_kernels,
)
from basicsr.utils import DiffJPEG, USMSharp  # noqa: E402
from basicsr.utils.img_process_util import filter2D  # noqa: E402


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("+")[0].split(".")[:2])


KERNEL_TYPES = ["iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso"]


@pytest.mark.e2e  # the alias must work in a process that never imported basicsr
def test_fresh_interpreter_needs_the_alias_and_gets_it():
    """Proves the premise (the old module is gone) and the fix, away from this process's sys.modules."""
    code = textwrap.dedent("""
        import importlib, sys
        try:
            import torchvision.transforms.functional_tensor
            print("OLD_MODULE_PRESENT")
        except ModuleNotFoundError:
            print("OLD_MODULE_MISSING")
        from fluxir.compat import import_basicsr
        first = import_basicsr()
        second = import_basicsr()
        from basicsr.data.degradations import rgb_to_grayscale
        import torchvision.transforms.functional_tensor as ft
        print("SAME" if first is second and ft.rgb_to_grayscale is rgb_to_grayscale else "DIFFERENT")
    """)
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split()
    if _version(torchvision.__version__) >= (0, 17):  # the release that removed the module
        assert lines[0] == "OLD_MODULE_MISSING"
    assert lines[-1] == "SAME"


def test_calling_import_basicsr_twice_is_harmless():
    alias = sys.modules["torchvision.transforms.functional_tensor"]
    assert import_basicsr() is basicsr
    assert sys.modules["torchvision.transforms.functional_tensor"] is alias
    gray = alias.rgb_to_grayscale(torch.rand(1, 3, 4, 4), num_output_channels=1)
    assert gray.shape == (1, 1, 4, 4)


@pytest.mark.parametrize("kernel_type", KERNEL_TYPES)
@pytest.mark.parametrize("size", [7, 21])
def test_random_mixed_kernels(kernel_type, size):
    np.random.seed(size)
    kernel = random_mixed_kernels(
        [kernel_type],
        [1.0],
        size,
        [0.2, 3],
        [0.2, 3],
        [-math.pi, math.pi],
        [0.5, 4],
        [1, 2],
        noise_range=None,
    )
    assert kernel.shape == (size, size)
    assert kernel.sum() == pytest.approx(1.0, abs=1e-6)
    assert (kernel >= 0).all()
    np.testing.assert_allclose(kernel, kernel[::-1, ::-1], atol=1e-9)  # point-symmetric blur
    assert kernel[size // 2, size // 2] == kernel.max()


def test_circular_lowpass_kernel():
    kernel = circular_lowpass_kernel(np.pi / 3, 13, pad_to=21)
    assert kernel.shape == (21, 21)
    assert kernel.sum() == pytest.approx(1.0, abs=1e-6)
    assert kernel[10, 10] == kernel.max() and (kernel[:4] == 0).all()  # padded with zeros
    assert (kernel < 0).any()  # a sinc has negative lobes: it rings, unlike a Gaussian


def test_noise_functions():
    torch.manual_seed(0)
    img = torch.full((2, 3, 32, 32), 0.5)
    noisy = random_add_gaussian_noise_pt(img, sigma_range=[10, 20], clip=True, rounds=False, gray_prob=0.4)
    assert noisy.shape == img.shape and 0 <= noisy.min() and noisy.max() <= 1
    std = float((noisy - img).std() * 255)
    assert 8 < std < 22
    poisson = random_add_poisson_noise_pt(img, scale_range=[1, 2], gray_prob=0.4, clip=True, rounds=False)
    assert poisson.shape == img.shape and (poisson != img).float().mean() > 0.5


def test_diffjpeg_and_filter2d_on_its_output():
    torch.manual_seed(0)
    img = torch.rand(1, 3, 30, 45) * 0.5 + torch.linspace(0, 0.5, 45)  # size not a multiple of 16
    jpeger = DiffJPEG(differentiable=False)
    low = jpeger(img.clamp(0, 1), quality=img.new_tensor([30.0]))
    high = jpeger(img.clamp(0, 1), quality=img.new_tensor([95.0]))
    assert low.shape == img.shape
    assert (low - img).abs().mean() > (high - img).abs().mean() > 0  # lower quality, larger error
    # DiffJPEG returns a crop of its padded result; basicsr's filter2D .view()s, so make it contiguous
    kernel = torch.zeros(1, 5, 5)
    kernel[0, 2, 2] = 1
    assert torch.allclose(filter2D(low.contiguous(), kernel), low)  # a unit pulse is the identity


def test_filter2d_blurs_with_per_image_kernels():
    img = torch.rand(2, 3, 24, 24)
    box = torch.full((2, 3, 3), 1 / 9)
    out = filter2D(img, box)
    assert out.shape == img.shape
    assert out.std() < img.std()
    assert torch.allclose(out[0, :, 5, 5], img[0, :, 4:7, 4:7].mean(dim=(1, 2)), atol=1e-6)


def test_usm_sharp():
    usm = USMSharp()
    flat = torch.full((1, 3, 64, 64), 0.4)
    assert torch.allclose(usm(flat), flat, atol=1e-6)  # nothing to sharpen
    edge = torch.zeros(1, 3, 64, 64)
    edge[..., 32:] = 0.8
    sharp = usm(edge)
    assert sharp.shape == edge.shape and 0 <= sharp.min() and sharp.max() <= 1
    # overshoot next to the edge: the bright side gets brighter
    assert sharp[0, 0, 10, 33] > 0.8 and torch.allclose(sharp[..., :, :20], edge[..., :, :20], atol=1e-3)

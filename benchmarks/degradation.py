"""Throughput of ``fluxir.fluxgen.degrade`` against Real-ESRGAN's own way of degrading, in one run.

Reference: Real-ESRGAN's ``RealESRGANModel.feed_data`` with SeeSR's settings, written with basicsr's
functions exactly as there (torch ``USMSharp``, torch ``filter2D``, batched noise and ``DiffJPEG``) on
batches of 8, with kernels drawn per image like ``RealESRGANDataset``. Both sides start from the same
uint8 photos (scikit-image's bundled ones, resized and centre-cropped to ``--size``) and end with
uint8 HQ/LQ arrays, on the CPU with the same thread count; the two are timed batch by batch in turn.

    .venv/bin/python benchmarks/degradation.py --json
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import time

import cv2
import numpy as np
import skimage.data
import torch
import torch.nn.functional as F

from fluxir.compat import import_basicsr

import_basicsr()

from basicsr.data.degradations import (  # noqa: E402
    circular_lowpass_kernel,
    random_add_gaussian_noise_pt,
    random_add_poisson_noise_pt,
    random_mixed_kernels,
)
from basicsr.utils import DiffJPEG, USMSharp  # noqa: E402
from basicsr.utils.img_process_util import filter2D  # noqa: E402

from fluxir.fluxgen.degrade import DegradationConfig, degrade_pair  # noqa: E402

PHOTOS = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "immunohistochemistry",
    "hubble_deep_field",
    "retina",
    "cat",
)


def seesr_config(**overrides):
    """conf/base's degrade.config (SeeSR's settings, the one copy) with ``overrides``."""
    from fluxir.fluxgen.degrade import DegradationConfig
    from fluxir.parameters.config import load_params

    return DegradationConfig.from_params({**load_params("base", []).get("degrade")["config"], **overrides})


def load_photos(width: int, height: int) -> list[np.ndarray]:
    """Bundled photos scaled to cover (width, height), then centre-cropped: (height, width, 3) uint8."""
    out = []
    for name in PHOTOS:
        img = getattr(skimage.data, name)()[..., :3]
        f = max(width / img.shape[1], height / img.shape[0])
        img = cv2.resize(img, (math.ceil(img.shape[1] * f), math.ceil(img.shape[0] * f)), interpolation=cv2.INTER_CUBIC)
        top, left = (img.shape[0] - height) // 2, (img.shape[1] - width) // 2
        out.append(np.ascontiguousarray(img[top : top + height, left : left + width]))
    return out


# ------------------------------------------------------------------ reference: Real-ESRGAN feed_data


def dataset_kernels(c: DegradationConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """RealESRGANDataset.__getitem__'s three kernels, each padded to 21x21."""

    def blur(sinc_prob, kernel_list, kernel_prob, sigma, betag, betap):
        size = random.choice(c.kernel_sizes)
        if np.random.uniform() < sinc_prob:
            omega_c = np.random.uniform(np.pi / 3, np.pi) if size < 13 else np.random.uniform(np.pi / 5, np.pi)
            kernel = circular_lowpass_kernel(omega_c, size, pad_to=False)
        else:
            kernel = random_mixed_kernels(
                list(kernel_list),
                list(kernel_prob),
                size,
                sigma,
                sigma,
                [-math.pi, math.pi],
                betag,
                betap,
                noise_range=None,
            )
        pad = (21 - size) // 2
        return torch.FloatTensor(np.pad(kernel, ((pad, pad), (pad, pad))))

    k1 = blur(c.sinc_prob, c.kernel_list, c.kernel_prob, c.blur_sigma, c.betag_range, c.betap_range)
    k2 = blur(c.sinc_prob2, c.kernel_list2, c.kernel_prob2, c.blur_sigma2, c.betag_range2, c.betap_range2)
    if np.random.uniform() < c.final_sinc_prob:
        size = random.choice(c.kernel_sizes)
        sinc = torch.FloatTensor(circular_lowpass_kernel(np.random.uniform(np.pi / 3, np.pi), size, pad_to=21))
    else:
        sinc = torch.zeros(21, 21)
        sinc[10, 10] = 1
    return k1, k2, sinc


@torch.no_grad()
def reference_feed_data(images: list[np.ndarray], c: DegradationConfig, usm: USMSharp, jpeger: DiffJPEG):
    """Real-ESRGAN feed_data (SeeSR settings) on one batch -> uint8 HQ (B,H,W,3), LQ (B,H/4,W/4,3)."""
    gt = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().contiguous() / 255.0  # (B, 3, H, W)
    kernels = [dataset_kernels(c) for _ in images]
    k1, k2, sinc = (torch.stack(k) for k in zip(*kernels, strict=True))  # (B, 21, 21) each
    gt_usm = usm(gt)
    ori_h, ori_w = gt.shape[2:]

    def resize(x, probs, rng, size_at=None):
        updown = random.choices(["up", "down", "keep"], probs)[0]
        scale = (
            np.random.uniform(1, rng[1])
            if updown == "up"
            else (np.random.uniform(rng[0], 1) if updown == "down" else 1)
        )
        mode = random.choice(["area", "bilinear", "bicubic"])
        if size_at is None:
            return F.interpolate(x, scale_factor=scale, mode=mode)
        return F.interpolate(x, size=(int(size_at[0] * scale), int(size_at[1] * scale)), mode=mode)

    def noise(x, gauss_prob, sigma, poisson, gray):
        if np.random.uniform() < gauss_prob:
            return random_add_gaussian_noise_pt(x, sigma_range=sigma, clip=True, rounds=False, gray_prob=gray)
        return random_add_poisson_noise_pt(x, scale_range=poisson, gray_prob=gray, clip=True, rounds=False)

    def jpeg(x, q):
        return jpeger(torch.clamp(x, 0, 1), quality=x.new_zeros(x.size(0)).uniform_(*q)).contiguous()

    out = filter2D(gt_usm, k1)
    out = resize(out, c.resize_prob, c.resize_range)
    out = noise(out, c.gaussian_noise_prob, c.noise_range, c.poisson_scale_range, c.gray_noise_prob)
    out = jpeg(out, c.jpeg_range)
    if np.random.uniform() < c.second_blur_prob:
        out = filter2D(out, k2)
    out = resize(out, c.resize_prob2, c.resize_range2, (ori_h / c.scale, ori_w / c.scale))
    out = noise(out, c.gaussian_noise_prob2, c.noise_range2, c.poisson_scale_range2, c.gray_noise_prob2)
    lq_size = (ori_h // c.scale, ori_w // c.scale)
    if np.random.uniform() < 0.5:
        out = filter2D(F.interpolate(out, size=lq_size, mode=random.choice(["area", "bilinear", "bicubic"])), sinc)
        out = jpeg(out, c.jpeg_range2)
    else:
        out = jpeg(out, c.jpeg_range2)
        out = filter2D(F.interpolate(out, size=lq_size, mode=random.choice(["area", "bilinear", "bicubic"])), sinc)

    def to_uint8(x):
        return torch.clamp((x * 255.0).round(), 0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()

    return to_uint8(gt_usm), to_uint8(out)


# ------------------------------------------------------------------ timing


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, nargs=2, default=(512, 512), metavar=("WIDTH", "HEIGHT"))
    parser.add_argument("--n", type=int, default=16, help="pairs per side (rounded up to whole reference batches)")
    parser.add_argument("--batch", type=int, default=8, help="reference batch size (Real-ESRGAN / SeeSR style)")
    parser.add_argument("--threads", type=int, default=2, help="torch and OpenCV threads, both sides")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    width, height = args.size
    config = seesr_config(crop_sizes=((width, height),))  # SeeSR settings; the crop is the whole photo
    photos = load_photos(width, height)
    n_batches = math.ceil(args.n / args.batch)
    n = n_batches * args.batch
    batches = [[photos[(b * args.batch + i) % len(photos)] for i in range(args.batch)] for b in range(n_batches)]

    # warm-up both paths on a small batch (lazy initialisation, allocator), untimed
    usm, jpeger = USMSharp(), DiffJPEG(differentiable=False)
    random.seed(0), np.random.seed(0), torch.manual_seed(0)
    # 128 px: after a x0.15 resize torch's reflect padding of a 21x21 kernel still fits
    small = [np.ascontiguousarray(p[:128, :128]) for p in photos[:2]]
    reference_feed_data(small, seesr_config(crop_sizes=((128, 128),)), usm, jpeger)
    degrade_pair(small[0], "warm-up", 0, seesr_config(crop_sizes=((128, 128),)))

    # Interleave the two sides batch by batch so that load from other processes hits both alike.
    reference_s = ours_s = 0.0
    for b, batch in enumerate(batches):
        start = time.perf_counter()
        hq, lq = reference_feed_data(batch, config, usm, jpeger)
        reference_s += time.perf_counter() - start
        assert lq.shape == (args.batch, height // 4, width // 4, 3)

        start = time.perf_counter()
        for i, image in enumerate(batch):
            hq, lq, _ = degrade_pair(image, b * args.batch + i, 0, config)
        ours_s += time.perf_counter() - start
        assert hq.shape == (height, width, 3) and lq.shape == (height // 4, width // 4, 3)

    result = {
        "benchmark": "degradation",
        "ratio": (n / ours_s) / (n / reference_s),
        "pairs_per_s": n / ours_s,
        "reference_pairs_per_s": n / reference_s,
        "reference": f"Real-ESRGAN feed_data with basicsr functions, batches of {args.batch}",
        "image_size": [width, height],  # (width, height) of each HQ; LQ is 1/4 of it
        "n": n,
        "threads": args.threads,
        "seconds": ours_s,
        "reference_seconds": reference_s,
        "device": "cpu",
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
    }
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>22}: {value:.3f}" if isinstance(value, float) else f"{key:>22}: {value}")


if __name__ == "__main__":
    main()

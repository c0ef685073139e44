"""The degrade step: SeeSR / Real-ESRGAN degradation, crops and per-(id, seed) determinism.

Images are real photos from scikit-image, shrunk so each pair takes milliseconds on one thread.
"""

from __future__ import annotations

import random
import threading

import cv2
import numpy as np
import pytest
import skimage.data
import torch

from fluxir.compat import import_basicsr

import_basicsr()

from basicsr.utils import USMSharp  # noqa: E402
from basicsr.utils.img_process_util import filter2D  # noqa: E402

from fluxir.fluxgen.degrade import choose_crop, degrade_pair, filter2d, pair_seed  # noqa: E402
from fluxir.fluxgen.degrade_config import DegradationConfig, validate_crop_sizes  # noqa: E402

from support import base_params  # noqa: E402

SEESR = base_params("degrade")["config"]  # conf/base: SeeSR's settings and the paper's crops


def seesr(**overrides) -> DegradationConfig:
    """conf/base's degradation settings with ``overrides``."""
    return DegradationConfig.from_params({**SEESR, **overrides})


SMALL = seesr(crop_sizes=((128, 96), (96, 96), (64, 96)))  # the paper's 4:3, 1:1, 2:3 at 1/8


def _photo(name: str, width: int, height: int) -> np.ndarray:
    """(height, width, 3) uint8 RGB resized from a bundled scikit-image photo."""
    return cv2.resize(getattr(skimage.data, name)(), (width, height), interpolation=cv2.INTER_AREA)


@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    return {
        "astronaut": _photo("astronaut", 160, 120),
        "coffee": _photo("coffee", 128, 96),
        "rocket": _photo("rocket", 144, 112),
    }


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / mse)) if mse > 0 else float("inf")


# ------------------------------------------------------------------ determinism


def test_same_id_and_seed_give_identical_bytes(photos):
    hq1, lq1, info1 = degrade_pair(photos["astronaut"], "img_7", 3, SMALL)
    hq2, lq2, info2 = degrade_pair(photos["astronaut"], "img_7", 3, SMALL)
    assert hq1.tobytes() == hq2.tobytes() and lq1.tobytes() == lq2.tobytes()
    assert info1 == info2


def test_different_seed_or_id_changes_the_degradation(photos):
    _, lq, info = degrade_pair(photos["coffee"], 5, 0, SMALL)
    for image_id, seed in ((5, 1), (6, 0)):
        _, other_lq, other_info = degrade_pair(photos["coffee"], image_id, seed, SMALL)
        assert other_info != info
        assert other_lq.shape != lq.shape or not np.array_equal(other_lq, lq)


def test_result_does_not_depend_on_other_images_or_order(photos):
    jobs = [("astronaut", 1), ("coffee", 2), ("rocket", 3)]
    first = {i: degrade_pair(photos[name], i, 11, SMALL)[:2] for name, i in jobs}
    # reverse order, with unrelated images (and seeds) in between
    second = {}
    for name, i in reversed(jobs):
        degrade_pair(photos["rocket"], f"noise-{i}", 99, SMALL)
        second[i] = degrade_pair(photos[name], i, 11, SMALL)[:2]
    for i in first:
        assert np.array_equal(first[i][0], second[i][0]) and np.array_equal(first[i][1], second[i][1])


def test_global_rngs_neither_used_nor_disturbed(photos):
    def draw() -> tuple:
        return random.random(), float(np.random.rand()), float(torch.rand(1))

    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    expected = draw()
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    _, lq_a, _ = degrade_pair(photos["coffee"], "x", 0, SMALL)
    assert draw() == expected  # state restored after the call
    random.seed(2), np.random.seed(2), torch.manual_seed(2)
    _, lq_b, _ = degrade_pair(photos["coffee"], "x", 0, SMALL)
    assert np.array_equal(lq_a, lq_b)  # and the caller's seeds did not leak in


def test_pair_seed_is_stable_across_processes_and_id_types():
    # Hard-coded: a change here would silently change every manifest's pairs.
    assert pair_seed(1, 0) == 17153946617459046451
    assert pair_seed("img_000123", 42) == 12046146989262301271
    assert pair_seed(7, 0) == pair_seed("7", 0)  # ids read back from a CSV reproduce the pair
    with pytest.raises(ValueError, match="image_id"):
        pair_seed(1.5, 0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="seed"):
        pair_seed(1, "0")  # type: ignore[arg-type]


def test_thread_counts_and_threads_do_not_change_the_result(photos):
    config = seesr(crop_sizes=((128, 96),))
    image = photos["astronaut"]
    expected = [degrade_pair(image, i, 5, config)[1] for i in range(4)]
    torch_threads, cv2_threads = torch.get_num_threads(), cv2.getNumThreads()
    try:
        torch.set_num_threads(2), cv2.setNumThreads(2)
        # Another thread count may sum a blur in another order: a pixel may round to the next level, no more.
        # A leaked or shared random draw changes the whole image, far beyond this.
        for i in range(4):
            other = degrade_pair(image, i, 5, config)[1].astype(int)
            assert np.abs(other - expected[i]).max() <= 1 and (other != expected[i]).mean() < 1e-3, i
    finally:
        torch.set_num_threads(torch_threads), cv2.setNumThreads(cv2_threads)
    # concurrent callers (a threaded runner) must not interleave the seeded global generators
    results: dict[int, np.ndarray] = {}
    workers = [
        threading.Thread(target=lambda i=i: results.__setitem__(i, degrade_pair(image, i, 5, config)[1]))
        for i in range(4)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert all(np.array_equal(results[i], expected[i]) for i in range(4))  # same thread count: exact by design


# ------------------------------------------------------------------ shapes, dtypes, HQ


def test_default_config_gives_paper_crops_and_exact_quarter_lq():
    image = _photo("astronaut", 1024, 768)  # FluxGen's generation size, (width, height)
    seen = set()
    for seed in range(3):
        hq, lq, info = degrade_pair(image, "gen", seed, seesr())
        h, w = hq.shape[:2]
        assert (w, h) in {(1024, 768), (768, 768), (512, 768)}
        assert lq.shape == (h // 4, w // 4, 3) and h % 4 == 0 and w % 4 == 0
        assert hq.dtype == lq.dtype == np.uint8 and hq.flags.c_contiguous and lq.flags.c_contiguous
        left, top, cw, ch = info["crop"]
        assert (cw, ch) == (w, h) and (left, top) == ((1024 - w) // 2, 0)  # centred, as in the paper
        assert info["lq_size"] == [w // 4, h // 4]
        seen.add((w, h))
    assert len(seen) > 1  # the size really is drawn


def test_hq_is_the_exact_crop_without_usm(photos):
    image = photos["rocket"]
    config = seesr(crop_sizes=((64, 96),), use_usm=False, crop_position="random")
    flips = set()
    for seed in range(6):
        hq, _, info = degrade_pair(image, "r", seed, config)
        left, top, w, h = info["crop"]
        crop = image[top : top + h, left : left + w]
        assert np.array_equal(hq, crop[:, ::-1] if info["hflip"] else crop)
        flips.add(info["hflip"])
    assert flips == {True, False}  # SeeSR's use_hflip: both happen


def test_hq_is_seesr_usm_sharpened_gt(photos):
    """With use_usm the HQ is the crop after basicsr's USMSharp (what SeeSR saves as GT)."""
    config = seesr(crop_sizes=((128, 96),), use_hflip=False)
    image = photos["astronaut"]
    hq, _, info = degrade_pair(image, "u", 0, config)
    left, top, w, h = info["crop"]
    crop = torch.from_numpy(image[top : top + h, left : left + w].astype(np.float32) / 255).permute(2, 0, 1)[None]
    reference = (USMSharp()(crop)[0].permute(1, 2, 0).numpy() * 255).round().clip(0, 255).astype(np.uint8)
    assert np.abs(hq.astype(int) - reference.astype(int)).max() <= 1
    assert not np.array_equal(hq, image[top : top + h, left : left + w])  # it did sharpen


def test_opencv_filter_matches_basicsr_filter2d():
    x = torch.rand(1, 3, 40, 52)
    for size in (7, 21):
        kernel = np.random.default_rng(size).random((size, size)).astype(np.float32)  # asymmetric on purpose
        kernel /= kernel.sum()
        expected = filter2D(x, torch.from_numpy(kernel)[None])
        assert torch.allclose(filter2d(x, kernel), expected, atol=1e-5)


# ------------------------------------------------------------------ it really degrades


def test_lq_is_much_worse_than_clean_bicubic(photos):
    """Bicubic-upsampled LQ vs HQ: far below a clean x4 down/up-sampling of the same HQ."""
    config = seesr(crop_sizes=((128, 96),), use_usm=False)
    degraded, clean = [], []
    for seed in range(4):
        hq, lq, _ = degrade_pair(photos["astronaut"], "p", seed, config)
        degraded.append(_psnr(cv2.resize(lq, (128, 96), interpolation=cv2.INTER_CUBIC), hq))
        down = cv2.resize(hq, (32, 24), interpolation=cv2.INTER_AREA)
        clean.append(_psnr(cv2.resize(down, (128, 96), interpolation=cv2.INTER_CUBIC), hq))
    assert max(degraded) < min(clean)
    assert np.mean(degraded) < np.mean(clean) - 2.0


def test_noise_is_added():
    """Blur, resize and JPEG keep a flat grey image flat: any spread in the LQ is the added noise."""
    flat = np.full((64, 64, 3), 128, np.uint8)
    config = seesr(crop_sizes=((64, 64),))
    for seed in range(6):
        hq, lq, info = degrade_pair(flat, "flat", seed, config)
        assert (hq == 128).all()
        assert lq.astype(np.float64).std() > 1.0, info
        assert info["noise1"]["type"] in ("gaussian", "poisson") and info["noise2"]["type"] in (
            "gaussian",
            "poisson",
        )


# ------------------------------------------------------------------ crops and config errors


def test_validate_crop_sizes():
    assert validate_crop_sizes([[1024, 768], (512, 768)], 4) == [(1024, 768), (512, 768)]
    with pytest.raises(ValueError, match=r"\(512, 770\).*nearest valid size: \(512, 768\)"):
        validate_crop_sizes([(1024, 768), (512, 770)], 4)
    with pytest.raises(ValueError, match=r"multiples of 48.*nearest valid size: \(1008, 768\)"):
        validate_crop_sizes([(1024, 768)], scale=3)  # 16 and 3 -> 48
    with pytest.raises(ValueError, match="pair"):
        validate_crop_sizes([(1024, 768, 3)], 4)
    with pytest.raises(ValueError, match="non-empty"):
        validate_crop_sizes([], 4)


def test_choose_crop_only_uses_sizes_that_fit():
    sizes = [(1024, 768), (768, 768), (512, 768)]
    rng = random.Random(0)
    chosen = {choose_crop(800, 768, sizes, rng)[2:] for _ in range(50)}
    assert chosen == {(768, 768), (512, 768)}
    assert choose_crop(800, 800, [(512, 768)], rng) == (144, 16, 512, 768)  # centred
    for _ in range(20):
        left, top, _, _ = choose_crop(900, 800, [(512, 768)], rng, position="random")
        assert 0 <= left <= 900 - 512 and 0 <= top <= 800 - 768
    with pytest.raises(ValueError, match=r"\(600, 400\).*\(1024, 768\)"):
        choose_crop(600, 400, sizes, rng)


def test_small_image_error_names_the_sizes_and_the_parameter(photos):
    with pytest.raises(ValueError, match=r"\(160, 120\)") as err:
        degrade_pair(photos["astronaut"], 0, 0, seesr())  # the paper's crops are >= 512 wide
    assert "(degrade.config.crop_sizes, [width, height] pairs)" in str(err.value)
    assert "--params 'degrade.config.crop_sizes=[[160,120]]'" in str(err.value)


def test_bad_image_input_errors(photos):
    with pytest.raises(ValueError, match="float32"):
        degrade_pair(photos["coffee"].astype(np.float32), 0, 0, SMALL)
    with pytest.raises(ValueError, match=r"\(96, 128\)"):
        degrade_pair(photos["coffee"][..., 0], 0, 0, SMALL)
    with pytest.raises(ValueError, match="numpy array"):
        degrade_pair(photos["coffee"].tolist(), 0, 0, SMALL)  # type: ignore[arg-type]


def test_conf_base_holds_seesr_settings():
    c = seesr()
    assert c.scale == 4 and c.crop_sizes == ((1024, 768), (768, 768), (512, 768))
    assert c.kernel_sizes == tuple(range(7, 22, 2))
    assert c.kernel_prob == c.kernel_prob2 == (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)
    assert (c.sinc_prob, c.sinc_prob2, c.final_sinc_prob) == (0.1, 0.1, 0.8)
    assert (c.blur_sigma, c.blur_sigma2) == ((0.2, 3.0), (0.2, 1.5))
    assert (c.resize_prob, c.resize_range, c.noise_range) == ((0.2, 0.7, 0.1), (0.15, 1.5), (1.0, 30.0))
    assert (c.resize_prob2, c.resize_range2, c.noise_range2) == ((0.3, 0.4, 0.3), (0.3, 1.2), (1.0, 25.0))
    assert (c.poisson_scale_range, c.poisson_scale_range2) == ((0.05, 3.0), (0.05, 2.5))
    assert (c.jpeg_range, c.jpeg_range2, c.second_blur_prob) == ((30.0, 95.0), (30.0, 95.0), 0.8)
    assert c.use_usm and c.use_hflip


def test_config_from_params():
    config = DegradationConfig.from_params({**SEESR, "crop_sizes": [[512, 512]]})
    assert config.crop_sizes == ((512, 512),) and isinstance(config.noise_range, tuple)
    assert DegradationConfig.from_params(config.to_dict()) == config
    with pytest.raises(ValueError, match="'noise_rnage'"):
        DegradationConfig.from_params({**SEESR, "noise_rnage": [1, 30]})
    partial = {k: v for k, v in SEESR.items() if k != "noise_range"}
    with pytest.raises(ValueError, match=r"degrade.config lacks \['noise_range'\]"):
        DegradationConfig.from_params(partial)
    with pytest.raises(ValueError, match="resize_prob"):
        DegradationConfig.from_params({**SEESR, "resize_prob": [0.5, 0.5, 0.5]})
    with pytest.raises(ValueError, match="kernel_list2.*'gauss'"):
        DegradationConfig.from_params({**SEESR, "kernel_list2": ["gauss"], "kernel_prob2": [1.0]})
    with pytest.raises(ValueError, match=r"\(500, 768\)"):
        DegradationConfig.from_params({**SEESR, "crop_sizes": [[500, 768]]})
    with pytest.raises(ValueError, match="degrade.config.blur_sigma2.*low < high"):
        DegradationConfig.from_params({**SEESR, "blur_sigma2": [1.0, 1.0]})
    with pytest.raises(ValueError, match="jpeg_range"):
        DegradationConfig.from_params({**SEESR, "jpeg_range": [30, 120]})


def test_first_order_blur_follows_blur_sigma(photos):
    """Same draws, only the order-1 Gaussian width differs: the wider blur gives a smoother LQ."""
    quiet = dict(
        crop_sizes=((128, 96),),
        use_usm=False,
        use_hflip=False,
        kernel_list=("iso",),
        kernel_prob=(1.0,),
        sinc_prob=0.0,
        second_blur_prob=0.0,
        final_sinc_prob=0.0,
        resize_prob=(0.0, 0.0, 1.0),
        gaussian_noise_prob=1.0,
        noise_range=(0.1, 0.1),
        gaussian_noise_prob2=1.0,
        noise_range2=(0.1, 0.1),
        jpeg_range=(95.0, 95.0),
        jpeg_range2=(95.0, 95.0),
    )

    def sharpness(lq: np.ndarray) -> float:
        return float(cv2.Laplacian(lq.astype(np.float32), cv2.CV_32F).var())

    for seed in range(3):
        _, sharp_lq, _ = degrade_pair(photos["astronaut"], "b", seed, seesr(**quiet, blur_sigma=(0.2, 0.21)))
        _, soft_lq, _ = degrade_pair(photos["astronaut"], "b", seed, seesr(**quiet, blur_sigma=(3.0, 3.01)))
        assert sharpness(soft_lq) < 0.7 * sharpness(sharp_lq)

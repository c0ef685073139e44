"""fluxir.iqa: real pyiqa code on tiny inputs (weight-free and seeded random-weight metrics), no downloads.

Scenarios that need pyiqa imported with another weight folder run in a subprocess: pyiqa fixes its
folder at import, and this test process has imported it already.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from PIL import Image, ImageFilter
from skimage.color import rgb2ycbcr
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from fluxir import iqa
from fluxir.iqa import weights as iqa_weights

from conftest import REPO

# ----------------------------------------------------------------------------- helpers


def _small(img: np.ndarray, size: tuple[int, int] = (64, 48)) -> np.ndarray:
    return np.asarray(Image.fromarray(img).resize(size, Image.BICUBIC))


def _blur(img: np.ndarray, radius: float = 1.5) -> np.ndarray:
    return np.asarray(Image.fromarray(img).filter(ImageFilter.GaussianBlur(radius)))


def _noise(img: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(np.rint(img + rng.normal(0, sigma, img.shape)), 0, 255).astype(np.uint8)


def _jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    return np.asarray(Image.open(buf).convert("RGB"))


def _degrade(img: np.ndarray, seed: int) -> np.ndarray:
    """Blur + Gaussian noise + JPEG, the usual synthetic degradations."""
    return _jpeg(_noise(_blur(img, 1.2), 8, seed), 40)


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    """Four real photos (scikit-image samples) at the tiny 64x48 size."""
    return [
        _small(f()) for f in (skimage.data.astronaut, skimage.data.coffee, skimage.data.chelsea, skimage.data.rocket)
    ]


def _run_python(code: str, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (pyiqa not yet imported) with the repo's src on the path."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "KEDRO_DISABLE_TELEMETRY": "true", "OMP_NUM_THREADS": "1"}
    env.pop("TORCH_HOME", None)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env, timeout=300, check=False
    )


# ----------------------------------------------------------------------------- specs and names


def test_metric_spec_parse_forms():
    assert iqa.MetricSpec.parse("musiq") == iqa.MetricSpec("musiq", True, {})
    spec = iqa.MetricSpec.parse(
        {"name": "lpips", "pretrained": False, "net": "squeeze", "options": {"pnet_rand": True}}
    )
    assert spec == iqa.MetricSpec("lpips", False, {"net": "squeeze", "pnet_rand": True})
    assert iqa.MetricSpec.parse(spec) is spec
    assert spec.metric_mode == "FR" and iqa.MetricSpec.parse("piqe").metric_mode == "NR"


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"name": "musiq", "pretrained": "false"}, "'pretrained' must be true or false"),
        ({"pretrained": False}, "needs a string 'name'"),
        ({"name": "musiq", "options": {"pretrained": False}}, "top level"),
        (3, "a name or a dict"),
    ],
)
def test_metric_spec_parse_rejects_bad_specs(bad, message):
    with pytest.raises((ValueError, TypeError), match=message):
        iqa.MetricSpec.parse(bad)


def test_unknown_metric_name_lists_known_names():
    with pytest.raises(ValueError) as err:
        iqa.MetricSpec.parse("musiqq")
    text = str(err.value)
    assert "unknown IQA metric 'musiqq'" in text and "Did you mean musiq" in text
    for known in ("maniqa-pipal", "clipiqa+_vitL14_512", "piqe", "psnr", "lpips"):
        assert known in text


def test_duplicate_metric_names_are_rejected():
    with pytest.raises(ValueError, match="unique"):
        iqa.create_metrics(["piqe", {"name": "piqe"}])


@pytest.mark.parametrize(
    "name, lower",
    [
        ("piqe", True),
        ("brisque", True),
        ("niqe", True),
        ("lpips", True),
        ("musiq", False),
        ("maniqa-pipal", False),
        ("clipiqa+_vitL14_512", False),
        ("psnr", False),
        ("entropy", False),
    ],
)
def test_lower_is_better_by_name(name, lower):
    assert iqa.lower_is_better(name) is lower
    assert iqa.lower_is_better({"name": name}) is lower


def test_lower_is_better_on_built_metrics():
    built = iqa.create_metrics(["piqe", "entropy"])
    assert iqa.lower_is_better(built["piqe"]) is True
    assert iqa.lower_is_better(built["entropy"]) is False


@pytest.mark.e2e  # pyiqa fixes its weight folder (TORCH_HOME) at import: a fresh process per setting
def test_module_import_is_light():
    """Kedro pipeline modules import the constants: no torch, no pyiqa until something is computed."""
    result = _run_python(
        """
        import sys
        from fluxir import iqa
        spec = iqa.MetricSpec.parse({"name": "musiq", "pretrained": False})
        assert iqa.lower_is_better("piqe") and not iqa.lower_is_better(spec)
        assert iqa.required_weight_files("maniqa-pipal")
        print(sorted(m for m in ("torch", "pyiqa") if m in sys.modules))
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# ----------------------------------------------------------------------------- weight files


def test_required_weight_files_per_metric():
    hub = Path(iqa.configure_weights(None)).parent

    def names(spec):
        return [(p.parent.name, p.name) for p in iqa.required_weight_files(spec)]

    assert names("musiq") == [("pyiqa", "musiq_koniq_ckpt-e95806b9.pth")]
    # The MANIQA checkpoint holds the whole ViT, so no timm/Hugging Face backbone is needed.
    assert names("maniqa-pipal") == [("pyiqa", "MANIQA_PIPAL-ae6d356b.pth")]
    assert names("clipiqa+_vitL14_512") == [("clip", "ViT-L-14.pt"), ("pyiqa", "CLIPIQA%2B_ViTL14_512-e66488f2.pth")]
    assert names("lpips") == [("checkpoints", "alexnet-owt-7be5be79.pth"), ("pyiqa", "LPIPS_v0.1_alex-df73285e.pth")]
    # Random weights need nothing, except CLIP-IQA's frozen CLIP backbone, which is always read.
    assert names({"name": "musiq", "pretrained": False}) == []
    assert names({"name": "maniqa-pipal", "pretrained": False}) == []
    assert names({"name": "clipiqa+_vitL14_512", "pretrained": False}) == [("clip", "ViT-L-14.pt")]
    for spec in (*iqa.NO_REFERENCE_TINY, *iqa.FULL_REFERENCE_TINY, "psnr", "ssimc", "psnry"):
        assert iqa.required_weight_files(spec) == []
    assert all(p.parent.parent == hub for p in iqa.required_weight_files("clipiqa+_vitL14_512"))
    own = iqa.required_weight_files({"name": "musiq", "pretrained_model_path": "/x/my_musiq.pth"})
    assert own == [Path("/x/my_musiq.pth")]


def test_weight_table_matches_pyiqa_urls():
    """The file names checked up front are exactly the ones pyiqa would fetch."""
    import torchvision.models as tvm
    from pyiqa.archs import (
        clip_model,
        clipiqa_arch,
        lpips_arch,
        maniqa_arch,
        musiq_arch,
    )

    def base(url):
        return url.rsplit("/", 1)[-1]

    for key, file in iqa_weights.MUSIQ_FILES.items():
        assert base(musiq_arch.default_model_urls[key]) == file
    for key, file in iqa_weights.MANIQA_FILES.items():
        assert base(maniqa_arch.default_model_urls[key]) == file
    for key, file in iqa_weights.CLIPIQA_FILES.items():
        assert base(clipiqa_arch.default_model_urls[key]) == file
    for key, file in iqa_weights.LPIPS_FILES.items():
        assert base(lpips_arch.default_model_urls[key]) == file
    for name, (sha, file) in iqa_weights.CLIP_BACKBONES.items():
        assert clip_model._MODELS[name] == f"{iqa_weights.CLIP_URL}{sha}/{file}"
    assert set(iqa_weights.CLIP_NAMES) == set(clip_model._MODELS)
    assert base(tvm.AlexNet_Weights.IMAGENET1K_V1.url) == iqa_weights.LPIPS_BACKBONES["alex"]
    assert base(tvm.VGG16_Weights.IMAGENET1K_V1.url) == iqa_weights.LPIPS_BACKBONES["vgg"]
    assert base(tvm.SqueezeNet1_1_Weights.IMAGENET1K_V1.url) == iqa_weights.LPIPS_BACKBONES["squeeze"]


@pytest.mark.e2e  # pyiqa fixes its weight folder (TORCH_HOME) at import: a fresh process per setting
def test_missing_weights_one_error_before_any_scoring(tmp_path):
    """Empty weights_dir: one FileNotFoundError listing every file, its folder and URL; images untouched."""
    result = _run_python(
        f"""
        from fluxir import iqa
        folder = iqa.configure_weights({str(tmp_path)!r})
        print("FOLDER", folder)

        def images():
            raise RuntimeError("images were read before the weight check")
            yield

        try:
            iqa.score_no_reference(images(), [*iqa.NO_REFERENCE_DEFAULT, "piqe"], progress=False, batch_size=2)
        except FileNotFoundError as err:
            print(err)
        try:
            iqa.check_weights(["lpips"])
        except FileNotFoundError as err:
            print(err)
        """
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    hub = tmp_path.resolve() / "hub"
    assert f"FOLDER {hub / 'pyiqa'}" in out
    assert "4 IQA weight file(s) missing" in out and "set iqa.weights_dir" in out
    expected = [
        ("clipiqa+_vitL14_512", "ViT-L-14.pt", hub / "clip", "https://openaipublic.azureedge.net/clip/models/"),
        ("clipiqa+_vitL14_512", "CLIPIQA%2B_ViTL14_512-e66488f2.pth", hub / "pyiqa", "https://huggingface.co/"),
        ("maniqa-pipal", "MANIQA_PIPAL-ae6d356b.pth", hub / "pyiqa", "https://huggingface.co/"),
        ("musiq", "musiq_koniq_ckpt-e95806b9.pth", hub / "pyiqa", "https://huggingface.co/"),
        ("lpips", "alexnet-owt-7be5be79.pth", hub / "checkpoints", "https://download.pytorch.org/models/"),
        ("lpips", "LPIPS_v0.1_alex-df73285e.pth", hub / "pyiqa", "https://huggingface.co/"),
    ]
    for metric, file, folder, url in expected:
        assert f"{metric} needs {file} in {folder}; download from {url}" in out, out
    assert "piqe needs" not in out
    assert "images were read" not in out + result.stderr
    assert not any(p.is_file() for p in tmp_path.rglob("*")), "nothing may be written, let alone downloaded"


@pytest.mark.e2e  # pyiqa fixes its weight folder (TORCH_HOME) at import: a fresh process per setting
def test_undescribed_metric_download_is_refused(tmp_path):
    """A metric outside the table (brisque) still never downloads: our error names its file and folder."""
    result = _run_python(
        f"""
        from fluxir import iqa
        iqa.configure_weights({str(tmp_path)!r})
        iqa.check_weights(["brisque"])  # nothing known to check: passes with a warning
        try:
            iqa.create_metrics(["brisque"])
        except FileNotFoundError as err:
            print("ERR", err)
        """
    )
    assert result.returncode == 0, result.stderr
    folder = tmp_path.resolve() / "hub" / "pyiqa"
    assert f"ERR brisque needs brisque_svm_weights.pth in {folder}" in result.stdout
    assert "Nothing is downloaded" in result.stdout
    assert not (folder / "brisque_svm_weights.pth").exists()


def test_configure_weights_refuses_a_second_folder_after_pyiqa_import(tmp_path):
    import pyiqa  # noqa: F401  (fixes pyiqa's folder in this process)
    from pyiqa.utils import download_util

    assert iqa.configure_weights(None) == Path(download_util.DEFAULT_CACHE_DIR)
    with pytest.raises(RuntimeError, match="already imported"):
        iqa.configure_weights(tmp_path)
    file = tmp_path / "f"
    file.write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file"):
        iqa.configure_weights(file)


@pytest.mark.e2e  # pyiqa fixes its weight folder (TORCH_HOME) at import: a fresh process per setting
def test_pretrained_path_loads_weights_from_weights_dir(tmp_path, photos):
    """musiq with 'trained' weights read from <weights_dir>/hub/pyiqa gives that checkpoint's scores."""
    import torch

    random_musiq = iqa.create_metrics([{"name": "musiq", "pretrained": False}])["musiq"]
    folder = tmp_path / "hub" / "pyiqa"
    folder.mkdir(parents=True)
    torch.save(random_musiq.net.state_dict(), folder / "musiq_koniq_ckpt-e95806b9.pth")
    expected = iqa.score_no_reference(
        photos[:2], [{"name": "musiq", "pretrained": False}], progress=False, batch_size=2
    )
    np.save(tmp_path / "imgs.npy", np.stack(photos[:2]))
    result = _run_python(
        f"""
        import json, numpy as np, torch
        torch.set_num_threads(1)
        from fluxir import iqa
        iqa.configure_weights({str(tmp_path)!r})
        images = list(np.load({str(tmp_path / "imgs.npy")!r}))
        scores = iqa.score_no_reference(images, ["musiq"], progress=False, batch_size=2)
        print(json.dumps(scores["musiq"].tolist()))
        """
    )
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(loaded, expected["musiq"].to_numpy(), rtol=1e-5)


def test_maniqa_builds_offline_without_imagenet_backbone():
    """pyiqa asks timm for ImageNet ViT weights (a Hugging Face download); we build MANIQA without them."""
    metric = iqa.create_metrics([{"name": "maniqa-pipal", "pretrained": False}])["maniqa-pipal"]
    assert metric.net.__class__.__name__ == "MANIQA" and iqa.lower_is_better(metric) is False


def test_metric_versions_names_weight_files():
    info = iqa.metric_versions(iqa.NO_REFERENCE_DEFAULT)
    from importlib.metadata import version

    assert info["pyiqa"] == version("pyiqa")
    assert info["metrics"]["musiq"]["weights"] == ["musiq_koniq_ckpt-e95806b9.pth"]
    assert info["metrics"]["maniqa-pipal"]["weights"] == ["MANIQA_PIPAL-ae6d356b.pth"]
    tiny = iqa.metric_versions(iqa.NO_REFERENCE_TINY)["metrics"]
    assert tiny["musiq"] == {"pretrained": False, "options": {}, "weights": [], "random_weight_seed": 0}
    json.dumps(info)  # goes into manifests


# ----------------------------------------------------------------------------- no-reference scoring


def test_weight_free_scores_are_finite_and_see_blur(photos):
    blurred = [_blur(p, 1.5) for p in photos]
    scores = iqa.score_no_reference(photos + blurred, iqa.NO_REFERENCE_TINY, batch_size=4, progress=False)
    assert list(scores.columns) == ["entropy", "piqe", "musiq"] and len(scores) == 8
    assert np.isfinite(scores.to_numpy()).all()
    sharp, soft = scores.iloc[:4].reset_index(drop=True), scores.iloc[4:].reset_index(drop=True)
    # PIQE (lower is better) rates every blurred photo worse than its sharp original.
    assert (soft["piqe"] > sharp["piqe"] + 5).all(), scores
    # Seeded random weights: a second build gives the same scores (reproducible tiny runs). It scores at another
    # batch size (2 vs 4), and BLAS kernels differ by batch (2.4e-7 apart seen), so not bit for bit; other
    # weights (another seed) would move the scores by far more than this tolerance.
    again = iqa.score_no_reference(photos[:2], [{"name": "musiq", "pretrained": False}], progress=False, batch_size=2)
    np.testing.assert_allclose(again["musiq"].to_numpy(), sharp["musiq"].to_numpy()[:2], rtol=1e-5, atol=1e-6)


def test_batching_matches_one_by_one_and_keeps_order(photos):
    # Mixed sizes interleaved: batches group equal sizes, rows must still follow the input order.
    images = [
        photos[0],
        _small(photos[1], (48, 64)),
        photos[2],
        _small(photos[3], (48, 64)),
        photos[3],
        _noise(photos[0], 20, 1),
    ]
    specs = iqa.NO_REFERENCE_TINY
    batched = iqa.score_no_reference(images, specs, batch_size=3, progress=False)
    single = iqa.score_no_reference(images, specs, batch_size=1, progress=False)
    np.testing.assert_allclose(batched.to_numpy(), single.to_numpy(), rtol=1e-5, atol=1e-6)
    alone = iqa.score_no_reference([images[3]], specs, progress=False, batch_size=2)
    np.testing.assert_allclose(batched.iloc[3].to_numpy(), alone.iloc[0].to_numpy(), rtol=1e-5, atol=1e-6)
    assert not np.allclose(batched.iloc[0].to_numpy(), batched.iloc[5].to_numpy())


def test_paths_and_arrays_score_the_same(tmp_path, photos):
    paths = []
    for i, img in enumerate(photos[:2]):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(img).save(paths[-1])
    from_paths = iqa.score_no_reference(paths, ["entropy", "piqe"], progress=False, batch_size=2)
    from_arrays = iqa.score_no_reference(photos[:2], ["entropy", "piqe"], progress=False, batch_size=2)
    np.testing.assert_array_equal(from_paths.to_numpy(), from_arrays.to_numpy())


def test_bad_no_reference_inputs(tmp_path, photos):
    with pytest.raises(ValueError, match=r"image 1: expected an HxWx3 uint8 RGB array.*float64"):
        iqa.score_no_reference([photos[0], photos[1] / 255.0], ["piqe"], progress=False, batch_size=2)
    with pytest.raises(FileNotFoundError, match="image 0: no such file"):
        iqa.score_no_reference([tmp_path / "missing.png"], ["piqe"], progress=False, batch_size=2)
    with pytest.raises(ValueError, match="full-reference"):
        iqa.score_no_reference(photos, ["psnr"], progress=False, batch_size=2)
    with pytest.raises(ValueError, match="batch_size"):
        iqa.score_no_reference(photos, ["piqe"], batch_size=0, progress=False)


# ----------------------------------------------------------------------------- full-reference scoring


@pytest.fixture(scope="module")
def degraded_pairs() -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Real photos (crops) and blurred + noisy + JPEG versions of them."""
    refs = [skimage.data.astronaut()[:120, :160], skimage.data.coffee()[:96, :128], skimage.data.chelsea()[:100, :140]]
    return [_degrade(r, i) for i, r in enumerate(refs)], refs


def _skimage_reference(restored: np.ndarray, reference: np.ndarray, convention: str) -> tuple[float, float]:
    """PSNR and SSIM with scikit-image under the same convention (after the same crop)."""
    ssim_args = {"data_range": 255, "gaussian_weights": True, "sigma": 1.5, "use_sample_covariance": False}
    if convention == "rgb":
        psnr = peak_signal_noise_ratio(reference, restored, data_range=255)
        return psnr, structural_similarity(reference, restored, channel_axis=-1, **ssim_args)

    def luma(a):
        if convention == "y":  # full-range BT.601 luma, as pyiqa's default YIQ Y
            return a.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
        return rgb2ycbcr(a)[..., 0]  # MATLAB/BasicSR rgb2ycbcr Y in [16, 235]

    y_res, y_ref = luma(restored), luma(reference)
    psnr = peak_signal_noise_ratio(y_ref / 255, y_res / 255, data_range=1)
    # pyiqa's SSIM rounds Y to integer levels first (as MATLAB's uint8 images).
    return psnr, structural_similarity(np.round(y_ref), np.round(y_res), **ssim_args)


@pytest.mark.parametrize("convention", ["rgb", "y", "ycbcr"])
@pytest.mark.parametrize("crop_border", [0, 4])
def test_psnr_ssim_agree_with_skimage(degraded_pairs, convention, crop_border):
    restored, reference = degraded_pairs
    table = iqa.score_full_reference(
        restored, reference, ["psnr", "ssim"], convention=convention, crop_border=crop_border, batch_size=2
    )
    assert (table["convention"] == convention).all() and (table["crop_border"] == crop_border).all()
    c = crop_border
    for i, (res, ref) in enumerate(zip(restored, reference)):
        if c:
            res, ref = res[c:-c, c:-c], ref[c:-c, c:-c]
        psnr, ssim = _skimage_reference(res, ref, convention)
        got = table[table["image"] == i].set_index("metric")["value"]
        assert abs(got["psnr"] - psnr) < 1e-3, (i, got["psnr"], psnr)
        assert abs(got["ssim"] - ssim) < 1e-3, (i, got["ssim"], ssim)
        assert 15 < psnr < 40 and 0.3 < ssim < 0.99  # a real degradation, not a trivial case


def test_conventions_differ_as_documented(degraded_pairs):
    restored, reference = degraded_pairs
    psnr = {
        conv: iqa.score_full_reference(
            restored[:1], reference[:1], ["psnr"], convention=conv, crop_border=4, batch_size=2
        )["value"][0]
        for conv in iqa.CONVENTIONS
    }
    # Studio-range Y compresses differences by 219/255: +20*log10(255/219) = +1.32 dB over full-range Y.
    assert abs(psnr["ycbcr"] - psnr["y"] - 20 * np.log10(255 / 219)) < 0.05
    assert psnr["rgb"] != pytest.approx(psnr["y"], abs=0.1)


def test_ssim_clamps_negative_structure_like_pyiqa():
    """pyiqa zeroes negative local structure terms by design; scikit-image does not (visible on heavy noise)."""
    ref = skimage.data.coffee()[:96, :128]
    res = _noise(ref, 80, 0)
    got = iqa.score_full_reference([res], [ref], ["ssim"], convention="rgb", crop_border=0, batch_size=2)["value"][0]
    plain, ssim_map = structural_similarity(
        ref,
        res,
        channel_axis=-1,
        data_range=255,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        full=True,
    )
    assert (ssim_map < 0).any()
    assert abs(got - np.maximum(ssim_map, 0)[5:-5, 5:-5].mean()) < 1e-6  # pad 5 = (11 - 1) / 2, as skimage
    assert got > plain


def test_full_reference_records_convention_and_applies_crop(photos):
    ref = photos[0]
    res = ref.copy()
    res[:3] = 0  # differs only inside a 3-pixel top border
    table = iqa.score_full_reference(
        [res, _blur(ref)],
        [ref, ref],
        iqa.FULL_REFERENCE_TINY,
        convention="y",
        crop_border=4,
        names=["border", "blur"],
        batch_size=2,
    )
    assert list(table.columns) == ["image", "metric", "value", "convention", "crop_border"]
    assert list(table["metric"]) == ["psnr", "ssim", "lpips"] * 2
    assert dict(zip(table["metric"], table["convention"], strict=True)) == {"psnr": "y", "ssim": "y", "lpips": "rgb"}
    wide = table.pivot(index="image", columns="metric", values="value")
    assert wide.loc["border", "ssim"] == pytest.approx(1.0) and wide.loc["border", "lpips"] == pytest.approx(
        0.0, abs=1e-7
    )
    assert wide.loc["blur", "psnr"] < 40 and wide.loc["blur", "lpips"] > 0.01
    uncropped = iqa.score_full_reference([res], [ref], ["psnr"], convention="y", crop_border=0, batch_size=2)
    assert uncropped["value"][0] < wide.loc["border", "psnr"] - 20
    fixed = iqa.score_full_reference([res], [ref], ["psnry", "ssimc"], convention="rgb", crop_border=0, batch_size=2)
    assert list(fixed["convention"]) == ["y", "rgb"]


def test_full_reference_bad_inputs(photos):
    a, b = photos[0], photos[1]
    with pytest.raises(ValueError, match=r"image 0: restored is \(48, 64\) but reference is \(64, 48\)"):
        iqa.score_full_reference([a], [_small(b, (48, 64))], ["psnr"], batch_size=2, convention="y", crop_border=4)
    with pytest.raises(ValueError, match="reference ran out at image 1"):
        iqa.score_full_reference([a, a], [b], ["psnr"], batch_size=2, convention="y", crop_border=4)
    with pytest.raises(ValueError, match="convention must be one of"):
        iqa.score_full_reference([a], [b], ["psnr"], convention="Y", batch_size=2, crop_border=4)
    with pytest.raises(ValueError, match="too small for crop_border=24"):
        iqa.score_full_reference([a], [b], ["psnr"], crop_border=24, batch_size=2, convention="y")
    with pytest.raises(ValueError, match="no-reference"):
        iqa.score_full_reference([a], [b], ["psnr", "piqe"], batch_size=2, convention="y", crop_border=4)
    with pytest.raises(ValueError, match="set by score_full_reference"):
        iqa.score_full_reference(
            [a], [b], [{"name": "ssim", "test_y_channel": False}], batch_size=2, convention="y", crop_border=4
        )

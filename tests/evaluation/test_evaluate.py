"""The evaluate pipeline: benchmark preparation, baselines, the report, and a tiny run through Kedro + MLflow.

Benchmark folders here are made from scikit-image's bundled photos (real, redistributable images),
named like the real datasets' files (``Canon_001_HR.png`` / ``Canon_001_LR4.png``). PSNR/SSIM against
scikit-image are checked in test_iqa.py; here an "oracle" baseline (the HQ itself) proves that outputs
are paired with the right HQ crop through the whole pipeline.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import skimage.data
from PIL import Image

from demo_data import write_demo_benchmarks, write_env_demo
from fluxir.evaluation.config import parse_metric_groups
from fluxir.evaluation.report import (
    comparison_table,
    metric_means,
    mlflow_metrics,
    render_markdown,
    report_blocks,
)
from fluxir.evaluation.restore import baseline_manifest
from fluxir.evaluation.testsets import (
    DEMO_MARKER,
    BenchmarkSpec,
    aligned_crops,
    center_crop,
    collect,
    pair_key,
    prepare_benchmark,
)

from conftest import REPO, kedro_run
from support import base_params, save_identity_adapter

# its module-scoped runs are made once: every test of the file on one worker
pytestmark = pytest.mark.xdist_group("test_evaluate")

DEGRADATION = base_params("degrade")["config"]  # params:degrade.config, as the evaluate pipeline passes it

SIX = ("PSNR", "SSIM", "LPIPS", "CLIPIQA", "MANIQA", "MUSIQ")


def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _read(path: str | Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def _downscale(image: np.ndarray, factor: int = 4) -> np.ndarray:
    h, w = image.shape[:2]
    return np.asarray(Image.fromarray(image).resize((w // factor, h // factor), Image.BICUBIC))


def _paired_folders(root: Path) -> dict[str, np.ndarray]:
    """RealSR-like HR (96x96) / LR (24x24) pairs of two photos, plus one LR without its HR."""
    hr = {"Canon_001": skimage.data.rocket()[100:196, 200:296], "Nikon_002": skimage.data.coffee()[50:146, 100:196]}
    for name, image in hr.items():
        _png(root / "HR" / f"{name}_HR.png", image)
        _png(root / "LR" / f"{name}_LR4.png", _downscale(image))
    _png(root / "LR" / "Canon_009_LR4.png", _downscale(hr["Canon_001"]))  # no partner: ignored
    return hr


def _spec(hq_dir: str | None = None, lq_dir: str | None = None, **kw) -> BenchmarkSpec:
    """Settings as in evaluate.benchmarks, folders as its catalog entry <key>_benchmark gives them."""
    return BenchmarkSpec.from_params({"hq_size": 64, "lq_size": 16, **kw}, {"hq": hq_dir, "lq": lq_dir})


# --------------------------------------------------------------------------------------------- #
# Preparation
# --------------------------------------------------------------------------------------------- #


def test_pair_key_strips_the_usual_suffixes():
    assert pair_key("Canon_001_HR") == pair_key("Canon_001_LR4") == "Canon_001"
    assert pair_key("DSC_1454_x1") == pair_key("DSC_1454_x4") == "DSC_1454"
    assert pair_key("0801") == "0801"


def test_paired_benchmark_is_centre_cropped_and_paired_by_name(tmp_path):
    hr = _paired_folders(tmp_path / "RealSR")
    spec = _spec(name="RealSR", kind="paired", hq_dir=str(tmp_path / "RealSR/HR"), lq_dir=str(tmp_path / "RealSR/LR"))
    result = prepare_benchmark(spec, tmp_path / "prepared")
    assert result.ready and not result.demo
    table = result.images
    assert list(table["image"]) == ["Canon_001", "Nikon_002"]
    for row in table.itertuples():
        source = hr[row.image]
        np.testing.assert_array_equal(_read(row.hq_path), source[16:80, 16:80])  # centre 64 of 96
        np.testing.assert_array_equal(_read(row.lq_path), _downscale(source)[4:20, 4:20])  # centre 16 of 24
    again = prepare_benchmark(spec, tmp_path / "prepared")  # same inputs: same folder, files reused
    assert list(again.images["hq_path"]) == list(table["hq_path"])


def _block_mean(image: np.ndarray, factor: int = 4) -> np.ndarray:
    """LQ pixel (y, x) = mean of HQ pixels [4y, 4y + 4) x [4x, 4x + 4): a pair whose alignment is known."""
    h, w = image.shape[0] // factor * factor, image.shape[1] // factor * factor
    blocks = image[:h, :w].astype(np.float64).reshape(h // factor, factor, w // factor, factor, 3)
    return blocks.mean(axis=(1, 3)).round().astype(np.uint8)


def test_paired_crops_keep_the_hq_offset_at_scale_times_the_lq_offset(tmp_path):
    """Odd LQ sides (37 x 41): centre-cropping each image alone would shift the HQ by 2 px."""
    rng = np.random.default_rng(0)
    hq = rng.integers(0, 256, (4 * 41 + 3, 4 * 37 + 2, 3), dtype=np.uint8)  # HQ a few px larger, as tolerated
    lq = _block_mean(hq)
    assert lq.shape == (41, 37, 3)
    hq_crop, lq_crop = aligned_crops(hq, lq, 16, 4)
    np.testing.assert_array_equal(_block_mean(hq_crop), lq_crop)  # the same scene, pixel for pixel
    assert not np.array_equal(_block_mean(center_crop(hq, 64)), lq_crop)  # the old, separate centre crops
    # Through preparation: the prepared pair is that aligned pair.
    _png(tmp_path / "HR" / "odd_HR.png", hq)
    _png(tmp_path / "LR" / "odd_LR4.png", lq)
    spec = _spec(name="RealSR", kind="paired", hq_dir=str(tmp_path / "HR"), lq_dir=str(tmp_path / "LR"))
    row = prepare_benchmark(spec, tmp_path / "prepared").images.iloc[0]
    np.testing.assert_array_equal(_read(row.hq_path), hq_crop)
    np.testing.assert_array_equal(_read(row.lq_path), lq_crop)
    with pytest.raises(ValueError, match=r"does not cover the 64px crop at \(top, left\)=\(48, 40\)"):
        aligned_crops(hq[:100], lq, 16, 4)


def test_missing_or_empty_benchmark_is_skipped_with_a_clear_message(tmp_path, caplog):
    (tmp_path / "empty").mkdir()
    missing = _spec(name="DrealSR", kind="paired", hq_dir=str(tmp_path / "nope/HR"), lq_dir=str(tmp_path / "nope/LR"))
    empty = _spec(name="RealLQ250", kind="lq_only", lq_dir=str(tmp_path / "empty"))
    with caplog.at_level(logging.WARNING, logger="fluxir.evaluation.testsets"):
        results = [prepare_benchmark(s, tmp_path / "prepared") for s in (missing, empty)]
    assert [r.status for r in results] == ["skipped", "skipped"]
    assert "nope/HR not found" in results[0].message and "docs/evaluation.md" in results[0].message
    assert "holds no image" in results[1].message
    assert "DrealSR: skipped" in caplog.text
    with pytest.raises(ValueError, match="no benchmark is available"):
        collect(results)


def test_wrong_benchmark_content_is_an_error_not_a_skip(tmp_path):
    image = skimage.data.astronaut()[:96, :96]
    _png(tmp_path / "HR/a_HR.png", image)
    _png(tmp_path / "LR/a_LR4.png", image)  # LR at HR size: not an x4 pair
    spec = _spec(name="RealSR", kind="paired", hq_dir=str(tmp_path / "HR"), lq_dir=str(tmp_path / "LR"))
    with pytest.raises(ValueError, match="expected the HQ to be x4"):
        prepare_benchmark(spec, tmp_path / "prepared")
    _png(tmp_path / "LR2/b_LR4.png", image[:24, :24])
    spec = _spec(name="RealSR", kind="paired", hq_dir=str(tmp_path / "HR"), lq_dir=str(tmp_path / "LR2"))
    with pytest.raises(ValueError, match="no HQ/LQ pair"):
        prepare_benchmark(spec, tmp_path / "prepared")


def test_benchmark_folders_are_not_parameters():
    with pytest.raises(ValueError, match="the folders are the catalog entry's hq_path / lq_path"):
        BenchmarkSpec.from_params({"name": "B", "kind": "lq_only", "lq_size": 16, "lq_dir": "x"})


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"kind": "paired", "hq_dir": "x"}, "set lq_path in its catalog entry"),
        ({"kind": "lq_only", "lq_dir": "x", "lq_size": 20}, "multiple of 16"),
        ({"kind": "synthetic", "hq_dir": "x"}, "needs num_images"),
        ({"kind": "weird", "lq_dir": "x"}, "kind must be one of"),
        ({"kind": "lq_only", "lq_dir": "x", "colour": 1}, "unknown setting"),
    ],
)
def test_bad_benchmark_settings_are_rejected(bad, message):
    with pytest.raises(ValueError, match=message):
        _spec(name="B", **bad)


def test_div2k_val_crops_are_deterministic_degraded_pairs(tmp_path):
    for name in ("astronaut", "coffee"):
        _png(tmp_path / "DIV2K" / f"{name}.png", getattr(skimage.data, name)())
    spec = _spec(name="DIV2K-Val", kind="synthetic", hq_dir=str(tmp_path / "DIV2K"), num_images=3, seed=5)
    first = prepare_benchmark(spec, tmp_path / "a", DEGRADATION).images
    second = prepare_benchmark(spec, tmp_path / "b", DEGRADATION).images
    assert list(first["image"]) == ["astronaut_0", "coffee_0", "astronaut_1"]  # crop i from source i mod n
    for a, b in zip(first.itertuples(), second.itertuples()):
        assert _read(a.hq_path).shape == (64, 64, 3) and _read(a.lq_path).shape == (16, 16, 3)
        np.testing.assert_array_equal(_read(a.lq_path), _read(b.lq_path))  # fixed seed: same pairs
    assert not np.array_equal(_read(first["lq_path"][0]), _read(first["lq_path"][2]))  # two crops differ
    # The reference is the original DIV2K crop (no USM sharpening: that is for training HQ only).
    source = _read(tmp_path / "DIV2K" / "astronaut.png")
    hq = _read(first["hq_path"][0])
    found = [
        (y, x)
        for y in range(source.shape[0] - 63)
        for x in range(source.shape[1] - 63)
        if np.array_equal(source[y, x : x + 64], hq[0]) or np.array_equal(source[y, x : x + 64][::-1], hq[0])
    ]
    assert any(
        np.array_equal(source[y : y + 64, x : x + 64], hq)
        or np.array_equal(source[y : y + 64, x : x + 64][:, ::-1], hq)
        for y, x in found
    ), "the DIV2K-Val reference must be an unmodified crop of the source"
    other = prepare_benchmark(
        _spec(name="DIV2K-Val", kind="synthetic", hq_dir=str(tmp_path / "DIV2K"), num_images=3, seed=6),
        tmp_path / "a",
        DEGRADATION,
    ).images
    assert other["prep_key"][0] != first["prep_key"][0]  # another seed never mixes with the old crops
    assert not np.array_equal(_read(other["lq_path"][0]), _read(first["lq_path"][0]))


def test_demo_writer_fills_only_empty_folders(tmp_path):
    hr = _paired_folders(tmp_path / "RealSR")
    specs = {
        "realsr": _spec(
            name="RealSR", kind="paired", hq_dir=str(tmp_path / "RealSR/HR"), lq_dir=str(tmp_path / "RealSR/LR")
        ),
        "reallq250": _spec(name="RealLQ250", kind="lq_only", lq_dir=str(tmp_path / "LQ")),
    }
    written = write_demo_benchmarks(specs, DEGRADATION, count=2)
    assert list(written) == ["RealLQ250"]
    assert (tmp_path / "LQ" / DEMO_MARKER).is_file() and not (tmp_path / "RealSR/HR" / DEMO_MARKER).exists()
    assert sorted(p.name for p in (tmp_path / "RealSR/HR").iterdir()) == sorted(f"{k}_HR.png" for k in hr)
    lq = prepare_benchmark(specs["reallq250"], tmp_path / "prepared")
    assert lq.ready and lq.demo and len(lq.images) == 2 and lq.images["hq_path"].isna().all()


def test_baselines_are_matched_by_name_and_checked(tmp_path, caplog):
    manifest = pd.DataFrame(
        {
            "dataset": ["RealSR", "RealSR", "RealLQ250"],
            "image": ["Canon_001", "Nikon_002", "x"],
            "lq_path": [str(tmp_path / f"lq{i}.png") for i in range(3)],
            "hq_path": ["h", "h", None],
        }
    )
    for i in range(3):
        _png(tmp_path / f"lq{i}.png", np.zeros((16, 16, 3), np.uint8))
    root = tmp_path / "baselines"
    _png(root / "SeeSR/RealSR/Canon_001.png", np.zeros((64, 64, 3), np.uint8))
    _png(root / "SeeSR/RealSR/Nikon_002_LR4.png", np.zeros((64, 64, 3), np.uint8))  # suffix stripped
    _png(root / "SUPIR/RealSR/Canon_001.png", np.zeros((64, 64, 3), np.uint8))  # Nikon_002 missing
    with caplog.at_level(logging.WARNING, logger="fluxir.evaluation.restore"):
        found = baseline_manifest(manifest, root, 4)
    assert sorted(found["method"] + "/" + found["image"]) == ["SeeSR/Canon_001", "SeeSR/Nikon_002"]
    assert "SUPIR on RealSR: 1 of 2 images missing" in caplog.text
    _png(root / "SeeSR/RealLQ250/x.png", np.zeros((60, 64, 3), np.uint8))
    with pytest.raises(ValueError, match=r"x\.png is \(64, 60\), expected \(64, 64\)"):
        baseline_manifest(manifest, root, 4)


# --------------------------------------------------------------------------------------------- #
# Report
# --------------------------------------------------------------------------------------------- #


def _per_image() -> pd.DataFrame:
    rows = []
    for method, psnr, piqe in (("fluxir", (20.0, 22.0), (30.0, 40.0)), ("bicubic", (24.0, 24.0), (60.0, 70.0))):
        for i in range(2):
            rows.append(["RealSR", method, f"im{i}", "PSNR", "psnr", psnr[i], "y", 4, True, False])
            rows.append(["RealSR", method, f"im{i}", "MANIQA", "piqe", piqe[i], "rgb", 0, False, True])
    return pd.DataFrame(
        rows,
        columns=[
            "dataset",
            "method",
            "image",
            "label",
            "metric",
            "value",
            "convention",
            "crop_border",
            "higher_is_better",
            "stand_in",
        ],
    )


def test_report_puts_this_run_beside_the_paper():
    means = metric_means(_per_image())
    paper = pd.read_csv(REPO / "data/01_raw/reference/paper_table1.csv")
    table = comparison_table(means, paper, datasets=["RealSR", "DrealSR"])
    psnr = table[(table["Dataset"] == "RealSR") & (table["Metric"] == "PSNR ↑")].iloc[0]
    assert psnr["FluxIR (this run)"] == 21.0 and psnr["Bicubic (this run)"] == 24.0
    assert psnr["FluxIR (copied from the paper)"] == 20.7176 and psnr["SeeSR (copied from the paper)"] == 24.1676
    columns = [c for c in table.columns if not c.startswith("_")]
    measured = [i for i, c in enumerate(columns) if "(this run" in c]
    assert max(measured) < min(i for i, c in enumerate(columns) if c.endswith("(copied from the paper)"))
    tiny = comparison_table(means, paper, datasets=["RealSR"], tiny_models=True)
    assert "FluxIR (this run, tiny random weights)" in tiny.columns and "Bicubic (this run)" in tiny.columns
    assert psnr["Computed as"] == "psnr, Y, crop 4" and psnr["n"] == 2
    maniqa = table[(table["Dataset"] == "RealSR") & table["Metric"].str.startswith("MANIQA")].iloc[0]
    assert maniqa["Metric"] == "MANIQA STAND-IN (piqe ↓)"
    dreal = table[table["Dataset"] == "DrealSR"]
    assert len(dreal) == 6 and dreal["FluxIR (this run)"].isna().all() and (dreal["Computed as"] == "not run").all()
    status = {
        "RealSR": {"status": "ready", "message": "ok", "images": 2},
        "DrealSR": {"status": "skipped", "message": "DrealSR: skipped, folder x not found", "images": 0},
    }
    md = render_markdown(report_blocks(table, means, status, {"model": "m"}, {}, tiny=True))
    assert "TINY RUN - NOT A QUALITY RESULT" in md and "pyiqa `piqe` in place of the paper's `maniqa-pipal`" in md
    lines = {line.split(" | ")[1]: line for line in md.splitlines() if line.startswith("| RealSR | ")}
    assert "| 21.0000 | **24.0000** |" in lines["PSNR ↑"]  # best of this run: higher is better
    assert "| **35.0000** | 65.0000 |" in lines["MANIQA STAND-IN (piqe ↓)"]  # piqe: lower is better
    assert "DrealSR: skipped, folder x not found" in md


def test_bad_metric_settings_and_paper_table_are_rejected():
    groups = parse_metric_groups({"full_reference": {"PSNR": "psnr"}, "no_reference": {"MUSIQ": "musiq"}})
    assert groups["full_reference"]["PSNR"].name == "psnr"
    with pytest.raises(ValueError, match="other kind"):
        parse_metric_groups({"no_reference": {"PSNR": "psnr"}})
    with pytest.raises(ValueError, match="used twice"):
        parse_metric_groups({"full_reference": {"X": "psnr"}, "no_reference": {"X": "musiq"}})
    with pytest.raises(ValueError, match="unknown IQA metric 'musiqq'"):
        parse_metric_groups({"no_reference": {"MUSIQ": "musiqq"}})
    with pytest.raises(ValueError, match="full_reference"):
        parse_metric_groups(["psnr"])
    with pytest.raises(ValueError, match="lacks columns"):
        comparison_table(metric_means(_per_image()), pd.DataFrame({"dataset": ["RealSR"], "value": [1.0]}))


def test_setup_names_every_metric_option():
    from fluxir.evaluation.report import metric_settings

    names, options = metric_settings(
        {
            "full_reference": {"PSNR": "psnr"},
            "no_reference": {
                "MANIQA": {"name": "maniqa-pipal", "test_sample": 1},
                "MUSIQ": {"name": "musiq", "pretrained": False},
            },
        }
    )
    assert names.endswith(": PSNR=psnr; MANIQA=maniqa-pipal (test_sample=1); MUSIQ=musiq (random weights)")
    assert options == {"MANIQA": "test_sample=1"}


def test_mlflow_keys_carry_the_convention():
    metrics = mlflow_metrics(metric_means(_per_image()))
    assert metrics["RealSR.fluxir.PSNR.y_crop4"] == {"value": 21.0, "step": 0}
    assert metrics["RealSR.bicubic.MANIQA_standin_piqe.rgb_crop0"]["value"] == 65.0
    assert len(metrics) == 4


def test_methods_without_fluxir_need_no_adapter(tmp_path):
    from kedro.io.core import Version

    from fluxir.datasets import FluxIRAdapterDataset, MissingAdapter
    from fluxir.pipelines.evaluate.nodes import restore_benchmarks, upsample_bicubic

    missing = FluxIRAdapterDataset(filepath=str(tmp_path / "fluxir_adapter"), version=Version(None, None)).load()
    assert isinstance(missing, MissingAdapter)
    manifest = pd.DataFrame(
        {"dataset": ["RealSR"], "image": ["a"], "lq_path": ["x.png"], "hq_path": [None], "prep_key": ["k"]}
    )
    from fluxir.evaluation.config import EvaluateConfig

    def config(methods):
        return EvaluateConfig.from_params(base_params("evaluate", methods=methods, num_processes=1))

    outputs, info = restore_benchmarks(manifest, missing, str(tmp_path), config(["bicubic", "realesrgan"]))
    assert outputs.empty and info == {"FluxIR": "not run (not in evaluate.methods)"}
    with pytest.raises(
        ValueError,
        match=r"evaluate.methods: fluxir needs a trained FluxIR adapter: .*restore.method="
        r"flux_controlnet or realesrgan",
    ):
        restore_benchmarks(manifest, missing, str(tmp_path), config(["fluxir"]))
    assert upsample_bicubic(manifest, str(tmp_path), config(["fluxir"])).empty
    # bad methods are refused when the config is built, before any node runs
    for bad in (["bicubic", "bicubic"], ["seesr"], "fluxir"):
        with pytest.raises(ValueError, match=r"evaluate.methods must be a non-empty list of distinct names from"):
            config(bad)
    _png(tmp_path / "baselines/realesrgan/RealSR/a.png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="'realesrgan' names one of this run's methods"):
        baseline_manifest(manifest, tmp_path / "baselines", 4)


# --------------------------------------------------------------------------------------------- #
# The pipeline through Kedro and MLflow (tiny environment)
# --------------------------------------------------------------------------------------------- #


def _latest(project: Path, relative: str) -> Path:
    versions = sorted((project / relative).glob("*/*"))
    assert versions, f"nothing saved under {relative}"
    return versions[-1]


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """The tiny evaluate pipeline on test-made benchmarks (DrealSR missing) plus an oracle baseline, then the
    demo writer (what `make demo` runs), which fills only the missing DrealSR folder, and the run again."""
    from conftest import make_project_copy

    project = make_project_copy(tmp_path_factory.mktemp("evaluate") / "project", demo_benchmarks=False)
    shutil.copytree(REPO / "data/01_raw/reference", project / "data/01_raw/reference", dirs_exist_ok=True)
    save_identity_adapter(project)
    raw = project / "data/01_raw/benchmarks_demo"  # the tiny environment's benchmark folders
    for name in ("astronaut", "coffee"):
        _png(raw / "DIV2K_valid_HR" / f"{name}.png", getattr(skimage.data, name)())
    hr = _paired_folders(raw / "RealSR")
    for i, name in enumerate(("chelsea", "retina")):
        _png(raw / "RealLQ250" / f"{i:04d}.png", _downscale(getattr(skimage.data, name)()[:80, :80]))
    for name, image in hr.items():  # a perfect "restorer": the HQ centre crop itself
        _png(project / "data/01_raw/baselines/oracle/RealSR" / f"{name}.png", center_crop(image, 64))
    # plain one-line log records (the project's rich handler wraps long lines)
    (project / "logging_plain.yml").write_text(
        "version: 1\ndisable_existing_loggers: False\n"
        "formatters:\n  simple:\n    format: '%(name)s %(levelname)s %(message)s'\n"
        "handlers:\n  console:\n    class: logging.StreamHandler\n    formatter: simple\n    stream: ext://sys.stdout\n"
        "loggers:\n  kedro: {level: INFO}\n  fluxir: {level: INFO}\nroot:\n  level: INFO\n  handlers: [console]\n"
    )
    saved = os.environ.get("KEDRO_LOGGING_CONFIG")
    os.environ["KEDRO_LOGGING_CONFIG"] = str(project / "logging_plain.yml")
    try:
        first = kedro_run(project, "run", "--env=tiny", "--pipeline=evaluate")
        first_report = _latest(project, "data/08_reporting/evaluation_report.md").read_text()
        first_table = pd.read_parquet(_latest(project, "data/08_reporting/evaluation_per_image.parquet"))
        demo = write_env_demo("tiny", project)
        second = kedro_run(project, "run", "--env=tiny", "--pipeline=evaluate")
    finally:
        if saved is None:
            os.environ.pop("KEDRO_LOGGING_CONFIG", None)
        else:
            os.environ["KEDRO_LOGGING_CONFIG"] = saved
    return {
        "project": project,
        "first": first,
        "second": second,
        "demo": demo,
        "report": first_report,
        "table": first_table,
    }


def test_missing_dataset_is_skipped_and_the_rest_runs(evaluated):
    log = evaluated["first"].stdout + evaluated["first"].stderr
    assert "DrealSR: skipped, folder data/01_raw/benchmarks_demo/DrealSR/HR not found" in log
    table = evaluated["table"]
    assert sorted(table["dataset"].unique()) == ["DIV2K-Val", "RealLQ250", "RealSR"]
    assert "Evaluation report:" in log and "evaluation_report.html" in log


def test_per_image_table_has_six_metrics_and_their_conventions(evaluated):
    table = evaluated["table"]
    assert set(table["label"]) == set(SIX)
    fr = table[table["label"].isin(["PSNR", "SSIM"])]
    assert set(fr["convention"]) == {"y"} and set(fr["crop_border"]) == {4}
    assert set(table[table["label"] == "LPIPS"]["convention"]) == {"rgb"}
    nr = table[table["label"].isin(["CLIPIQA", "MANIQA", "MUSIQ"])]
    assert set(nr["crop_border"]) == {0} and nr["value"].notna().all()
    assert table[table["dataset"] == "RealLQ250"]["label"].isin(["CLIPIQA", "MANIQA", "MUSIQ"]).all()  # no HQ
    # 4 DIV2K crops + 2 RealSR pairs + 2 RealLQ250: every computed method on all, the oracle on RealSR only
    counts = table[table["label"] == "CLIPIQA"].groupby("method").size().to_dict()
    assert counts == {"fluxir": 8, "bicubic": 8, "realesrgan": 8, "flux_controlnet": 8, "oracle": 2}
    oracle = table[table["method"] == "oracle"].set_index(["image", "label"])["value"]
    for image in ("Canon_001", "Nikon_002"):  # HQ paired with the right crop all the way through
        assert oracle[(image, "SSIM")] == pytest.approx(1.0)
        assert oracle[(image, "LPIPS")] == pytest.approx(0.0, abs=1e-6)
        assert oracle[(image, "PSNR")] >= 60
    bicubic_psnr = table[(table["method"] == "bicubic") & (table["label"] == "PSNR")]["value"]
    assert bicubic_psnr.between(10, 60).all() and bicubic_psnr.nunique() == len(bicubic_psnr)


def test_report_compares_with_the_paper_and_says_tiny(evaluated):
    report = evaluated["report"]
    assert "TINY RUN - NOT A QUALITY RESULT" in report
    for label in SIX:
        assert f"| {label} " in report
    table1 = report.split("## Table 1")[1]
    header = next(line for line in table1.splitlines() if line.startswith("| Dataset |"))
    assert (
        header.index("| FluxIR (this run, tiny random weights) |")
        < header.index("| Flux ControlNet upscaler (this run, tiny random weights) |")
        < header.index("| Real-ESRGAN x4plus (this run, tiny random weights) |")
        < header.index("| Bicubic (this run) |")
        < header.index("| oracle (your outputs) |")
        < header.index("| FluxIR (copied from the paper) |")
    )
    realsr_psnr = next(line for line in report.splitlines() if line.startswith("| RealSR | PSNR ↑"))
    assert "| psnr, Y, crop 4 |" in realsr_psnr and "| 20.7176 |" in realsr_psnr  # paper's FluxIR beside ours
    values = realsr_psnr.split(" | ")[4:9]  # the five measured columns: all numbers
    assert all(float(v.strip("*")) > 0 for v in values), values
    assert "| DrealSR | skipped |" in report
    setup = report.split("## Setup")[1].split("## Benchmarks")[0]  # every convention behind the numbers
    for row in (
        "| PSNR / SSIM channel | y: Y = 0.299 R + 0.587 G + 0.114 B",
        "| border crop | 4 px cut from each side",
        "(LPIPS is cropped too",
        "| colour fix | wavelet (evaluate.color_fix",
        "| sampler | 20 Euler steps, schedule flux_shift, Flux guidance 4.0 (the adapter's training value)",
        "| adapter training | no training record: an untrained adapter",
        (
            "| Real-ESRGAN x4plus | RRDBNet x4 (num_feat 8, num_block 1, num_grow_ch 4) from "
            "data/01_raw/tiny/realesrgan/RealESRGAN_x4plus.pth; tiles of 8 px with 4 px context"
        ),
        (
            "| Flux ControlNet upscaler | diffusers FluxControlNetPipeline: data/01_raw/tiny/flux_controlnet on "
            "data/01_raw/tiny/flux; control image = bicubic-upsampled LQ, empty prompt, 4 steps, "
            "controlnet_conditioning_scale 0.6"
        ),
    ):
        assert row in setup, row
    project = evaluated["project"]
    html = _latest(project, "data/08_reporting/evaluation_report.html").read_text()
    assert "data:image/png;base64," in html and "TINY RUN" in html
    for key in ("div2k_val", "realsr", "drealsr", "reallq250"):
        assert Image.open(_latest(project, f"data/08_reporting/{key}_grid.png")).size[0] > 100


def test_mlflow_holds_params_metrics_and_the_report(evaluated):
    import mlflow

    from fluxir.runtime.hooks import experiment_name

    project = evaluated["project"]
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(experiment_name("evaluate"))
    runs = client.search_runs([experiment.experiment_id], order_by=["start_time ASC"])
    assert len(runs) == 2
    first = runs[0]
    assert first.data.params["evaluate.convention"] == "y" and first.data.params["evaluate.crop_border"] == "4"
    assert first.data.params["evaluate.restore.steps"] == "20"
    metrics = first.data.metrics
    assert metrics["eval.RealSR.oracle.SSIM.y_crop4"] == pytest.approx(1.0)
    assert "eval.RealSR.fluxir.PSNR.y_crop4" in metrics
    assert "eval.RealSR.realesrgan.PSNR.y_crop4" in metrics and "eval.RealSR.flux_controlnet.PSNR.y_crop4" in metrics
    assert "eval.RealLQ250.bicubic.MUSIQ_standin_musiq.rgb_crop0" in metrics
    assert not any(".DrealSR." in key for key in metrics)
    table = evaluated["table"]
    rows = (table["dataset"] == "DIV2K-Val") & (table["method"] == "fluxir") & (table["label"] == "PSNR")
    mean = table[rows]["value"].mean()
    assert metrics["eval.DIV2K-Val.fluxir.PSNR.y_crop4"] == pytest.approx(mean)
    artifacts = {a.path for a in client.list_artifacts(first.info.run_id, "reporting")}
    for name in ("evaluation_report.md", "evaluation_report.html", "evaluation_per_image.parquet", "realsr_grid.png"):
        assert f"reporting/{name}" in artifacts
    assert any(key.startswith("eval.DrealSR.fluxir.") for key in runs[1].data.metrics)  # demo filled it


def test_demo_writer_fills_only_the_missing_folder_and_the_run_reuses_outputs(evaluated):
    project = evaluated["project"]
    raw = project / "data/01_raw/benchmarks_demo"
    assert evaluated["demo"] == {
        "DrealSR": sorted(str(project / f"data/01_raw/benchmarks_demo/DrealSR/{s}") for s in ("HR", "LR"))
    }
    assert (raw / "DrealSR/HR" / DEMO_MARKER).is_file()
    assert not (raw / "RealSR/HR" / DEMO_MARKER).exists() and not (raw / "DIV2K_valid_HR" / DEMO_MARKER).exists()
    log = evaluated["second"].stdout + evaluated["second"].stderr
    for title in ("FluxIR", "Real-ESRGAN x4plus", "Flux ControlNet upscaler"):
        assert f"{title}: 3 images restored now, 8 reused" in log
    report = _latest(project, "data/08_reporting/evaluation_report.md").read_text()
    assert "DrealSR: 3 images ready" in report and "[demo data]" in report
    assert pd.read_parquet(_latest(project, "data/08_reporting/evaluation_means.parquet"))["mean"].notna().all()


def test_a_rerun_scores_only_the_new_outputs(evaluated):
    """The second run adds DrealSR: every score of the first run is reused (the same values, even MANIQA's random
    crops), only DrealSR's are made."""
    project, first = evaluated["project"], evaluated["table"]
    second = pd.read_parquet(_latest(project, "data/08_reporting/evaluation_per_image.parquet"))
    new = second[second["dataset"] == "DrealSR"]
    assert len(new) and len(second) == len(first) + len(new)
    log = evaluated["second"].stdout + evaluated["second"].stderr
    assert f"scores: {len(new)} made now, {len(first)} reused from " in log
    keys = ["dataset", "method", "image", "label"]
    again = second.merge(first, on=keys, suffixes=("", "_first"), validate="one_to_one")
    assert len(again) == len(first) and (again["value"] == again["value_first"]).all()
    cache = pd.read_parquet(project / "data/07_model_output/evaluate_demo/scores.parquet")
    assert len(cache) == len(second) and cache["key"].is_unique

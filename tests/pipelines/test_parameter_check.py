"""Every parameter a run reads is checked before its first node: all problems in one message, nothing written."""

from __future__ import annotations

import contextlib
import sqlite3

import pytest

from fluxir.parameters.config import ConfigError, catalog_config, load_params
from fluxir.parameters.validation import check_params, groups_read, problems_for

from conftest import REPO, kedro_process, kedro_run
from support import kedro_session_run


def _files(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_fluxgen_run_with_three_bad_parameters_stops_before_anything_is_written(kedro_project):
    before = _files(kedro_project / "data")
    proc = kedro_run(
        kedro_project,
        "run",
        "--env=tiny",
        "--pipeline=fluxgen",
        "--params=select.percentile=150,iqa.metrics=[no_such_metric],degrade.workers=0",
        check=False,
    )
    out = " ".join((proc.stdout + proc.stderr).split())
    assert proc.returncode != 0
    assert "3 parameter problem(s) found before kedro run --pipeline=fluxgen started" in out
    assert "unknown IQA metric 'no_such_metric'" in out
    assert "select.percentile must be in (0, 100) exclusive, got 150" in out
    assert "degrade.workers must be 'auto' or a positive integer, got 0" in out
    assert _files(kedro_project / "data") == before  # no image, no dataset version
    db = kedro_project / "mlflow.db"
    if db.exists():  # kedro-mlflow opens its store when the session starts; no run may be left in it
        with sqlite3.connect(db) as conn:
            assert conn.execute("select count(*) from runs").fetchone()[0] == 0


def test_a_missing_model_folder_stops_the_run_before_the_image_store_is_touched(kedro_project):
    # The model loads inside the node, after the image store's lock is taken: a check there would leave a new store
    # folder holding only its .lock.
    before = _files(kedro_project / "data")
    with pytest.raises(ConfigError) as caught:
        kedro_session_run(
            kedro_project, env="tiny", pipeline="fluxgen", params={"fluxgen": {"model": "/nonexistent/flux"}}
        )
    assert "1 parameter problem(s) found before kedro run --pipeline=fluxgen started" in str(caught.value)
    assert "fluxgen.model: model source '/nonexistent/flux' is neither an existing local folder" in str(caught.value)
    assert _files(kedro_project / "data") == before


def test_evaluate_run_with_bad_methods_convention_and_baselines_stops_before_anything_is_written(kedro_project):
    before = _files(kedro_project / "data")
    proc = kedro_run(
        kedro_project,
        "run",
        "--env=tiny",
        "--pipeline=evaluate",
        "--params=evaluate.methods=[fluxir,sharpen],evaluate.convention=lab,baselines.realesrgan.tile_pad=-1",
        check=False,
    )
    out = " ".join((proc.stdout + proc.stderr).split())
    assert proc.returncode != 0
    assert "3 parameter problem(s) found before kedro run --pipeline=evaluate started" in out
    assert "evaluate.methods must be a non-empty list of distinct names from" in out
    assert "got ['fluxir', 'sharpen']" in out
    assert "evaluate.convention must be one of ('rgb', 'y', 'ycbcr'), got 'lab'" in out
    assert "baselines.realesrgan.tile_pad must be an integer >= 0, got -1" in out
    assert _files(kedro_project / "data") == before  # no prepared benchmark, no restored image, no version


@pytest.mark.parametrize(
    ("value", "wording"),
    [
        ("[]", "got []"),
        ("[bicubic,bicubic]", "got ['bicubic', 'bicubic']"),
        ("bicubic", "got 'bicubic'"),
    ],
)
def test_evaluate_methods_must_be_distinct_known_names(value, wording):
    problems = problems_for(load_params("tiny", [f"evaluate.methods={value}"], REPO), ["evaluate"])
    assert len(problems) == 1
    assert problems[0].startswith("evaluate.methods must be a non-empty list of distinct names from")
    assert wording in problems[0]


def test_every_bad_evaluate_and_baselines_value_is_listed():
    overrides = [
        "evaluate.crop_border=-1",
        "evaluate.num_processes=0",
        "evaluate.grid_images=0",
        "baselines.realesrgan.weights=''",
        "baselines.realesrgan.tile_size=0",
        "baselines.flux_controlnet.steps=0",
        "baselines.flux_controlnet.guidance_scale=-1",
    ]
    problems = problems_for(load_params("tiny", overrides, REPO), ["evaluate", "baselines"])
    text = "\n".join(problems)
    for expected in (
        "evaluate.crop_border must be an integer >= 0, got -1",
        "evaluate.num_processes must be 'auto' or an integer >= 1, got 0",
        "evaluate.grid_images must be a positive integer, got 0",
        "baselines.realesrgan.weights must be a non-empty string, got ''",
        "baselines.realesrgan.tile_size must be a positive integer or null, got 0",
        "baselines.flux_controlnet.steps must be a positive integer, got 0",
        "baselines.flux_controlnet.guidance_scale must be a number >= 0",
    ):
        assert expected in text
    assert len(problems) == 7
    assert problems_for(load_params("tiny", ["evaluate.num_processes=2"], REPO), ["evaluate"]) == []


def test_a_missing_realesrgan_weight_file_is_a_problem_only_where_a_run_uses_it():
    missing = ["baselines.realesrgan.weights=nowhere/RealESRGAN_x4plus.pth", "restore.input_dir=conf"]
    params = load_params("tiny", missing, REPO)
    assert any("baselines.realesrgan.weights: nowhere" in p for p in problems_for(params, ["evaluate"]))
    assert problems_for(params, ["restore", "baselines"]) == []  # restore.method fluxir reads no weights
    params = load_params("tiny", [*missing, "evaluate.methods=[fluxir,bicubic]", "restore.method=realesrgan"], REPO)
    assert problems_for(params, ["evaluate"]) == []
    assert any("baselines.realesrgan.weights: nowhere" in p for p in problems_for(params, ["restore"]))


def test_all_problems_of_one_group_are_listed():
    overrides = ["restore.tile_size=10", "restore.steps=0", "restore.color_fix=sepia", "restore.input_dir=nowhere"]
    params = load_params("tiny", overrides, REPO)
    problems = problems_for(params, ["restore"], catalog_config("tiny", REPO, overrides))
    text = "\n".join(problems)
    assert "restore.tile_size must be a multiple of 16 >= 32 (or null: no tiling), got 10" in text
    assert "restore.steps must be a positive integer, got 0" in text
    assert "restore.color_fix must be one of" in text
    assert f"catalog entry restore_input: '{REPO / 'nowhere'}' does not exist" in text
    assert len(problems) == 4
    no_input = problems_for(load_params("tiny", [], REPO), ["restore"], catalog_config("tiny", REPO))
    assert no_input == [p for p in no_input if "catalog entry restore_input has no path" in p] and no_input
    assert 'kedro run --pipeline=restore --params="restore.input_dir=photos' in no_input[0]


def test_groups_follow_the_parameters_the_pipeline_reads():
    assert groups_read(["params:fluxgen", "generated_images", "params:select.percentile", "params:iqa.metrics"]) == [
        "fluxgen",
        "iqa",
        "select",
    ]
    assert groups_read(["params:evaluate.scale", "params:iqa.device", "params:degrade.seed"]) == ["degrade", "evaluate"]


def test_the_base_and_tiny_parameters_pass():
    # base's Real-ESRGAN weights are downloaded by `python -m fluxir.fetch`; the tiny ones are committed
    tiny_weights = load_params("tiny", [], REPO)["baselines"]["realesrgan"]["weights"]
    for env in ("base", "tiny"):
        params = load_params(env, ["restore.input_dir=conf", f"baselines.realesrgan.weights={tiny_weights}"], REPO)
        groups = [g for g in ("fluxgen", "select", "degrade", "train", "restore", "evaluate", "baselines")]
        assert problems_for(params, groups) == [], env
    assert problems_for(load_params("tiny", [], REPO), ["iqa"]) == []


def test_entry_point_lists_every_problem_before_work(tmp_path):
    params = load_params("tiny", ["degrade.workers=0", "degrade.config.crop_position=left", "degrade.seed=x"], REPO)
    with pytest.raises(ConfigError) as caught:
        check_params(params, ["degrade"], "python -m fluxir.fluxgen pairs")
    message = str(caught.value)
    assert "3 parameter problem(s)" in message
    for text in ("degrade.workers", "crop_position must be 'center' or 'random'", "degrade.seed must be an integer"):
        assert text in message
    from fluxir.fluxgen.__main__ import main  # `python -m fluxir.fluxgen pairs`, in this process

    argv = ["pairs", "--env=tiny", "--params=degrade.workers=0", "--selection", str(tmp_path / "absent.parquet")]
    with contextlib.chdir(REPO), pytest.raises(ConfigError) as caught:
        main([*argv, "--store", str(tmp_path / "store")])
    assert "degrade.workers must be 'auto' or a positive integer, got 0" in str(caught.value)
    assert "absent.parquet" not in str(caught.value)  # stopped before reading any input
    assert not (tmp_path / "store").exists()


@pytest.mark.parametrize(
    ("module", "params", "expected"),
    [
        (
            "fluxir.restoration",
            "restore.input_dir=nowhere,restore.output_dir={out},baselines.flux_controlnet.steps=0",
            [
                "catalog entry restore_input: 'nowhere' does not exist",
                "baselines.flux_controlnet.steps must be a positive integer",
            ],
        ),
        (
            "fluxir.evaluation",
            "evaluate.methods=[fluxir,sharpen],evaluate.crop_border=-2",
            ["evaluate.methods must be a non-empty list", "evaluate.crop_border must be an integer >= 0, got -2"],
        ),
    ],
)
def test_restoration_and_evaluation_entry_points_refuse_bad_parameters_before_work(tmp_path, module, params, expected):
    """``python -m <module>`` (its ``main``, in this process) stops on the parameters before reading anything."""
    import importlib

    main = importlib.import_module(f"{module}.__main__").main
    out = tmp_path / "restored"
    argv = ["--env=tiny", f"--params={params.format(out=out)}"]
    argv += ["--manifest", str(tmp_path / "absent.parquet")] if module == "fluxir.evaluation" else []
    with contextlib.chdir(REPO), pytest.raises(ConfigError) as caught:
        main(argv)
    err = " ".join(str(caught.value).split())
    assert f"2 parameter problem(s) found before python -m {module} started" in err
    for text in expected:
        assert text in err
    assert "absent.parquet" not in err  # stopped before reading the manifest
    assert not out.exists()


@pytest.mark.parametrize("opted_out", [True, False])
@pytest.mark.e2e  # what a plain kedro command does at start-up, typed without make
def test_plain_kedro_commands_send_no_telemetry(kedro_project, no_network, monkeypatch, opted_out):
    """The project's .telemetry file opts out, so kedro without make (no KEDRO_DISABLE_TELEMETRY) stays offline."""
    for name in ("KEDRO_DISABLE_TELEMETRY", "DO_NOT_TRACK"):
        monkeypatch.delenv(name, raising=False)
    if not opted_out:
        (kedro_project / ".telemetry").unlink()
    kedro_process(kedro_project, "registry", "list")
    attempts = no_network.read_text()
    no_network.write_text("")  # the fixture fails on any attempt left in its log
    assert bool(attempts) != opted_out, attempts

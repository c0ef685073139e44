"""Command-line parameter overrides: lists in YAML flow syntax, repeated ``--params`` merged, ``-c`` run files.

``fluxir.parameters.config.parse_overrides`` serves ``kedro run`` (the project's ``fluxir/cli.py``) and every
``python -m fluxir...`` command; the base end-to-end test (tests/pipelines/test_base_end_to_end.py) runs
``kedro run -c`` with repeated ``--params`` through the real Kedro CLI.
"""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from fluxir.cli import run as kedro_run_command
from fluxir.parameters.config import cli_parser, load_params, parse_overrides, split_overrides

from conftest import REPO


def test_commas_inside_lists_and_quotes_do_not_split():
    assert split_overrides("a=1, b.c=[[512,512],[768,768]],p=['x, y', z],d={k: 1, j: 2}") == [
        "a=1",
        "b.c=[[512,512],[768,768]]",
        "p=['x, y', z]",
        "d={k: 1, j: 2}",
    ]
    with pytest.raises(ValueError, match="unbalanced brackets"):
        split_overrides("degrade.config.crop_sizes=[[512,512]")


def test_repeated_overrides_merge_and_later_ones_win_per_key():
    merged = parse_overrides(
        [
            {"fluxgen": {"steps": 2, "height": 32}},  # a run file's params come first
            "fluxgen.num_images=3,train.learning_rate=1e-5",
            "fluxgen.steps=4",
            "degrade.config.crop_sizes=[[512,512]],fluxgen.prompts=['a photo, at night', b]",
        ]
    )
    assert merged == {
        "fluxgen": {"steps": 4, "height": 32, "num_images": 3, "prompts": ["a photo, at night", "b"]},
        "train": {"learning_rate": 1e-5},
        "degrade": {"config": {"crop_sizes": [[512, 512]]}},
    }
    with pytest.raises(ValueError, match=r"\['fluxgen.steps'\] are not of the form key.sub=value"):
        parse_overrides(["fluxgen.steps"])


def test_project_clis_read_a_run_file_and_merge_their_params(tmp_path):
    run_file = tmp_path / "run.yml"
    run_file.write_text("run:\n  env: tiny\n  params:\n    fluxgen: {num_images: 3, steps: 1}\n")
    parser = cli_parser("python -m fluxir.x", None, "a=1")
    args = parser.parse_args(
        [
            "-c",
            str(run_file),
            "--params",
            "fluxgen.steps=2",
            "--params",
            "degrade.config.crop_sizes=[[32,32]]",
            "--project",
            str(REPO),
        ]
    )
    assert args.env == "tiny"
    params = load_params(args.env, args.params, args.project)
    assert params["fluxgen"]["num_images"] == 3 and params["fluxgen"]["steps"] == 2  # the command line wins
    assert params["fluxgen"]["height"] == 48  # siblings kept (conf/tiny)
    assert params["degrade"]["config"]["crop_sizes"] == [[32, 32]] and params["degrade"]["seed"] == 0
    assert parser.parse_args(["--env", "base", "-c", str(run_file)]).env == "base"


def test_kedro_run_refuses_a_broken_list_with_the_option_named():
    # Kedro's own command would run with crop_sizes '[[512' and fail at '512]]' with a generic message.
    result = CliRunner().invoke(kedro_run_command, ["--params", "degrade.config.crop_sizes=[[512,512]"])
    assert result.exit_code == 2 and "--params" in result.output and "unbalanced brackets" in result.output
    assert [p.name for p in kedro_run_command.params if "--params" in getattr(p, "opts", [])] == ["cli_params"]


def test_a_launch_that_lost_its_processes_is_named():
    from fluxir.parameters.config import lost_processes_warning

    simple = {"ACCELERATE_MIXED_PRECISION": "no", "ACCELERATE_USE_CPU": "True", "MASTER_PORT": "29500"}
    assert "started ONE" in lost_processes_warning(simple)
    assert lost_processes_warning({**simple, "WORLD_SIZE": "2"}) is None  # the multi-process launcher
    assert lost_processes_warning({"ACCELERATE_MIXED_PRECISION": "no"}) is None  # one process asked for
    assert lost_processes_warning({}) is None  # plain python -m


@pytest.mark.e2e  # the accelerate launcher's own CLI and its warning
def test_accelerate_cpu_with_two_processes_warns_from_the_cli(tmp_path):
    """`accelerate launch --cpu --num_processes 2` runs one process: the project CLI says so."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from conftest import free_port

    accelerate = Path(sys.executable).with_name("accelerate")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run(
        [
            str(accelerate),
            "launch",
            "--cpu",
            "--num_processes",
            "2",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "--main_process_port",
            str(free_port()),
            "-m",
            "fluxir.fetch",
            "--env",
            "tiny",
            "--list",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("asked for several processes but started ONE") == 1, proc.stderr[-3000:]

"""Settings of multi-process stages that need no process: ``num_processes``, the overrides handed to a child
job, the degradation share a launcher gives, and what the preflight check reports per stage."""

from __future__ import annotations

import sys

import pytest

from fluxir.fluxgen.pairs import launcher_rank_and_world, rank_and_world
from fluxir.parameters.config import load_params, split_overrides
from fluxir.runtime.launch import override_args, resolve_num_processes

from conftest import REPO


def test_num_processes_auto_is_one_without_a_gpu_and_bad_values_are_named():
    assert resolve_num_processes("auto", "fluxgen.num_processes") == 1  # this machine has no CUDA
    assert resolve_num_processes(3, "train.num_processes") == 3
    for bad in (0, "2", True, 1.5):
        with pytest.raises(ValueError, match="train.num_processes must be 'auto' or a positive integer"):
            resolve_num_processes(bad, "train.num_processes")


def test_overrides_reach_the_child_unchanged():
    """The parent's --params (nested, as Kedro parses them) rebuilt by the child's load_params."""
    runtime = {
        "fluxgen": {"num_images": 4, "prompts": ["a cat, sitting", "a dog"]},
        "degrade": {"config": {"crop_sizes": [[64, 48], [32, 48]]}},
        "select": {"percentile": 12.5},
    }
    args = override_args(runtime)
    params = load_params("tiny", args[1::2], REPO)
    assert params["fluxgen"]["num_images"] == 4 and params["fluxgen"]["prompts"] == ["a cat, sitting", "a dog"]
    assert params["degrade"]["config"]["crop_sizes"] == [[64, 48], [32, 48]]
    assert params["select"]["percentile"] == 12.5
    assert split_overrides("a=1,b=[2, 3],c='x,y'") == ["a=1", "b=[2, 3]", "c='x,y'"]


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, (0, 1)),
        ({"RANK": "3", "WORLD_SIZE": "8", "SLURM_PROCID": "0", "SLURM_NTASKS": "2"}, (3, 8)),  # torchrun wins
        ({"SLURM_PROCID": "1", "SLURM_NTASKS": "4"}, (1, 4)),  # srun -n 4
        (
            {"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_COUNT": "8"},
            (4, 8),
        ),  # --array=1-8
        (
            {
                "SLURM_ARRAY_TASK_ID": "2",
                "SLURM_ARRAY_TASK_MIN": "0",
                "SLURM_ARRAY_TASK_COUNT": "3",
                "SLURM_PROCID": "1",
                "SLURM_NTASKS": "2",
            },
            (5, 6),
        ),  # 3 array tasks x srun -n 2
    ],
)
def test_degradation_share_comes_from_the_launcher(environ, expected):
    assert launcher_rank_and_world(environ) == expected
    assert rank_and_world({"rank": None, "world_size": None}, environ) == expected
    assert rank_and_world({"rank": 1, "world_size": 2}, environ) == (1, 2)  # set by hand: an explicit override


def test_half_a_hand_set_share_and_stepped_arrays_are_refused():
    with pytest.raises(ValueError, match="set both degrade.rank and degrade.world_size or neither"):
        rank_and_world({"rank": 1, "world_size": None}, {})
    with pytest.raises(ValueError, match="SLURM_ARRAY_TASK_STEP=2"):
        launcher_rank_and_world(
            {"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_STEP": "2"}
        )


def test_check_reports_processes_and_gpus_per_stage():
    from fluxir.preflight.machine import check_processes

    params = {
        "fluxgen": {"num_processes": "auto"},
        "train": {"num_processes": 2},
        "evaluate": {"num_processes": 4},
        "restore": {"num_processes": 0, "device": "auto"},
    }
    lines = {f.item: (f.status, f.detail) for f in check_processes(params, gpus=2)}
    assert lines["fluxgen.num_processes"] == (
        "OK",
        "generate and score: 2 processes (auto) on GPU(s) 0, 1 of 2 visible",
    )
    assert lines["train.num_processes"] == ("OK", "train: 2 processes (2) on GPU(s) 0, 1 of 2 visible")
    assert (
        lines["evaluate.num_processes"][0] == "FAIL"
        and "4 processes but 2 GPU(s) visible" in lines["evaluate.num_processes"][1]
    )
    assert (
        lines["restore.num_processes"][0] == "FAIL"
        and "must be 'auto' or a positive integer" in lines["restore.num_processes"][1]
    )
    cpu = {f.item: f.detail for f in check_processes(params, gpus=0)}
    assert cpu["fluxgen.num_processes"] == "generate and score: 1 CPU process (auto), no GPU"
    assert cpu["train.num_processes"] == "train: 2 CPU processes (2), no GPU"


def test_a_ranks_json_line_is_one_write(monkeypatch):
    """The ranks of `accelerate launch` share one unbuffered stdout pipe: a line written in two pieces (print's text,
    then its newline) can interleave with another rank's (seen as '{...}{...}' under load)."""
    from pathlib import Path

    from fluxir.runtime.entry import print_json

    writes = []

    class Recorder:
        def write(self, text: str) -> int:
            writes.append(text)
            return len(text)

        def flush(self) -> None:
            pass

    monkeypatch.setattr(sys, "stdout", Recorder())
    print_json({"rank": 1, "store": Path("data/x")})
    assert writes == ['{"rank": 1, "store": "data/x"}\n']

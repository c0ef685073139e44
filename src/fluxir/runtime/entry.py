"""The one skeleton of every stage's ``python -m`` command (also run as ``accelerate launch -m ...``): parse -> load the
parameters and check the stage's groups -> build its config and read its catalog inputs -> ``PartialState`` -> run the
stage function on this process -> ``wait_for_everyone`` -> print this process's summary as a JSON line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fluxir.parameters.config import cli_parser, load_catalog, load_params
from fluxir.parameters.validation import check_params


@dataclass(frozen=True)
class Input:
    """A catalog entry a stage reads: from ``flag``'s path when the command line gives one, else the catalog's."""

    flag: str | None  # e.g. "--manifest"; None: always the catalog's
    read: Callable[[str], Any]  # how to read the path given with ``flag``
    help: str = ""


def stage_parser(
    prog: str, description: str | None, params_example: str, inputs: Mapping[str, Input] = {}
) -> argparse.ArgumentParser:
    parser = cli_parser(prog, description, params_example)
    for spec in inputs.values():
        if spec.flag:
            parser.add_argument(spec.flag, default=None, help=spec.help)
    return parser


def load_stage(
    args: argparse.Namespace, prog: str, groups: Sequence[str], inputs: Mapping[str, Input] = {}, folders: Any = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(parameters of ``args.env`` with ``--params``, ``{input name: value}``): ``groups`` checked before anything
    loads, each input read from its flag's path or loaded from the catalog."""
    params = load_params(args.env, args.params, args.project)
    check_params(params, list(groups), prog, folders)
    paths = {
        name: getattr(args, spec.flag.lstrip("-").replace("-", "_")) if spec.flag else None
        for name, spec in inputs.items()
    }
    catalog = None if all(paths.values()) else load_catalog(args.env, args.project, args.params)
    values = {name: spec.read(paths[name]) if paths[name] else catalog.load(name) for name, spec in inputs.items()}
    return params, values


def process_state(device: str) -> Any:
    """This process's ``accelerate`` state (CPU processes with gloo when ``device`` is cpu or no GPU is there)."""
    from accelerate import PartialState

    from fluxir.models.loading import accelerate_cpu

    return PartialState(cpu=accelerate_cpu(device))


def shard(state: Any) -> tuple[int, int, Any, bool]:
    """(process index, processes, device, progress bar on): what every sharded stage function takes."""
    return state.process_index, state.num_processes, state.device, state.is_local_main_process


def print_json(record: Mapping[str, Any]) -> None:
    """One JSON line in a single write: the ranks of ``accelerate launch`` share its stdout pipe (unbuffered), and
    ``print`` writes the text and the newline apart, so two ranks' lines could interleave."""
    sys.stdout.flush()
    sys.stdout.write(json.dumps(record, default=str) + "\n")
    sys.stdout.flush()


def finish(state: Any, summary: Mapping[str, Any]) -> None:
    state.wait_for_everyone()
    print_json({**summary, "rank": state.process_index, "processes": state.num_processes})


@dataclass(frozen=True)
class StageCommand:
    """What one stage adds to the skeleton: its parameter group, config, inputs and the function it runs."""

    prog: str
    description: str
    params_example: str
    group: str
    build: Callable[[Mapping[str, Any]], Any]  # the stage's config from its parameter group
    inputs: Mapping[str, Input]
    run: Callable[[Any, dict[str, Any], Any], Mapping[str, Any]]  # (config, inputs, state) -> summary

    def main(self, argv: Sequence[str] | None = None) -> None:
        parser = stage_parser(self.prog, self.description, self.params_example, self.inputs)
        args = parser.parse_args(argv)
        params, values = load_stage(args, self.prog, [self.group], self.inputs)
        cfg = self.build(params[self.group])
        state = process_state(cfg.device)
        finish(state, self.run(cfg, values, state))


def run_subcommand(prog: str, commands: Mapping[str, Callable[[list[str]], None]], argv: Sequence[str] | None) -> None:
    """``prog <name> [options]``: run ``commands[name]`` with the options; a usage error names the choices."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in commands:
        given = f"{argv[0]!r}" if argv else "none"
        sys.exit(f"usage: {prog} {{{','.join(commands)}}} [options]; got {given} (options: {prog} <name> --help)")
    commands[argv[0]](argv[1:])

"""One environment rule: every command given no ``--env`` reads the env ``kedro run`` reads (Kedro's default run
env: conf/base plus the user's conf/local), so a check, a fetch, a stage and the app see the settings the run uses.

Each entry point's parser is run in-process on an empty command line and stopped right after it has chosen its
env; Kedro's own default is read from Kedro's settings class, not copied here.
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest
from kedro.framework.project import _ProjectSettings

from fluxir.parameters import config

from conftest import REPO

SRC = REPO / "src" / "fluxir"
SCRIPTS = REPO / "scripts"  # the dev tools (demo data): on pytest's pythonpath, imported by their file name


def kedro_default_run_env() -> str:
    """The env ``kedro run`` uses with no ``--env``, as Kedro's settings define it."""
    return _ProjectSettings._CONFIG_LOADER_ARGS.default["default_run_env"]


PARSERS = {"cli_parser", "stage_parser", "run_subcommand"}  # how a command line starts (fluxir.runtime.entry)
# Commands with subcommands: each is a command of its own (``python -m fluxir.fluxgen generate``).
SUBCOMMANDS = {
    "fluxir.fluxgen.__main__": [["generate"], ["score"], ["content_filter"], ["pairs"]],
    "fluxir.training.__main__": [[], ["latents"]],
}


def entry_point_modules() -> list[str]:
    """Modules under src/fluxir and scripts/ whose ``main`` builds its parser with ``cli_parser`` (or the stage
    skeleton's ``stage_parser`` / ``run_subcommand``)."""
    found = []
    for path in [*sorted(SRC.rglob("*.py")), *sorted(SCRIPTS.glob("*.py"))]:
        tree = ast.parse(path.read_text())
        for func in (n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main"):
            calls = {c.func.id for c in ast.walk(func) if isinstance(c, ast.Call) and isinstance(c.func, ast.Name)}
            if calls & PARSERS:
                root = SCRIPTS if path.parent == SCRIPTS else SRC.parent
                module = ".".join(path.relative_to(root).with_suffix("").parts)
                found.append(module)
    return found


def entry_point_commands() -> list[tuple[str, ...]]:
    """(module, subcommand...) of every command line."""
    return [(m, *sub) for m in entry_point_modules() for sub in SUBCOMMANDS.get(m, [[]])]


class _Parsed(Exception):
    def __init__(self, namespace):
        self.namespace = namespace


def parsed_default_env(module_name: str, monkeypatch: pytest.MonkeyPatch, *subcommand: str) -> str:
    """The env ``module_name``'s ``main([*subcommand])`` settles on, stopped before it reads any configuration."""
    parse = config._CliParser.parse_args

    def stop_after_parsing(self, args=None, namespace=None):
        raise _Parsed(parse(self, args, namespace))

    monkeypatch.setattr(config._CliParser, "parse_args", stop_after_parsing)
    module = importlib.import_module(module_name)
    with pytest.raises(_Parsed) as parsed:
        module.main(list(subcommand))
    return parsed.value.namespace.env


def test_the_project_runs_kedros_default_env():
    from fluxir import settings

    assert settings.CONFIG_LOADER_ARGS["default_run_env"] == kedro_default_run_env() == config.DEFAULT_ENV


def test_every_entry_point_is_found():
    modules = set(entry_point_modules())
    expected = {
        "fluxir.preflight.__main__",
        "fluxir.app.__main__",
        "fluxir.fetch.__main__",
        "fluxir.fluxgen.__main__",
        "fluxir.training.__main__",
        "fluxir.evaluation.__main__",
        "demo_data",
        "fluxir.restoration.__main__",
    }
    assert expected <= modules, f"entry points no longer built with cli_parser: {sorted(expected - modules)}"


def test_no_entry_point_declares_its_own_env_option():
    """An ``--env`` option outside ``cli_parser`` could carry another default."""
    offenders = [
        str(path.relative_to(REPO))
        for path in SRC.rglob("*.py")
        if path.name != "config.py" and re.search(r"add_argument\(\s*['\"]--env['\"]", path.read_text())
    ]
    assert offenders == []


@pytest.mark.parametrize("command", entry_point_commands(), ids=" ".join)
def test_entry_point_default_env_is_kedro_runs(command, monkeypatch):
    monkeypatch.delenv("KEDRO_ENV", raising=False)
    assert parsed_default_env(command[0], monkeypatch, *command[1:]) == kedro_default_run_env()


def test_run_file_env_then_kedro_env_then_default(monkeypatch, tmp_path: Path):
    """The precedence ``kedro run`` applies: --env, else the -c run file's env, else KEDRO_ENV, else local."""
    run_file = tmp_path / "run.yml"
    run_file.write_text("run:\n  env: tiny\n")
    monkeypatch.setenv("KEDRO_ENV", "base")
    parser = config.cli_parser("prog", None, "a=1")
    assert parser.parse_args(["-c", str(run_file)]).env == "tiny"
    assert parser.parse_args(["-c", str(run_file), "--env", "local"]).env == "local"
    assert parser.parse_args([]).env == "base"
    monkeypatch.delenv("KEDRO_ENV")
    assert parser.parse_args([]).env == kedro_default_run_env()


def test_slurm_scripts_default_to_kedro_runs_env():
    common = (REPO / "scripts" / "slurm" / "common.sh").read_text()
    defaults = re.findall(r"FLUXIR_ENV=\$\{FLUXIR_ENV:-([^}]*)\}", common)
    assert defaults == [kedro_default_run_env()]
    for script in (REPO / "scripts" / "slurm").iterdir():
        assert "--env base" not in script.read_text(), script.name


@pytest.mark.parametrize("argv", [[], ["generat"]])
def test_a_command_with_stages_names_them_when_given_none_it_knows(argv):
    from fluxir.fluxgen.__main__ import main

    with pytest.raises(SystemExit) as stopped:
        main(argv)
    message = str(stopped.value)
    assert "python -m fluxir.fluxgen {generate,score,content_filter,pairs}" in message
    assert ("'generat'" if argv else "got none") in message

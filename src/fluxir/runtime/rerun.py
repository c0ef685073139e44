"""The ``kedro run`` command line that reruns a run, for its MLflow tags ``fluxir.command`` and ``kedro_command``
(``fluxir.runtime.hooks.MlflowRunHook``): ``--env`` (resolved), ``--pipelines`` (Kedro 1.7 deprecates ``--pipeline``),
the ``-c`` run file and ``--params`` as typed in a ``kedro run`` command (from a session started in Python: the
runtime params), and the node filters, ``--load-versions`` and runner options of the run.
"""

from __future__ import annotations

import json
from typing import Any

from fluxir.parameters.config import flatten_dict

DEFAULT_PIPELINE = "__default__"


# kedro run's options with a value, in the order a command shows them: (run_params key, option)
_LIST_OPTIONS = (
    ("tags", "--tags"),
    ("node_names", "--nodes"),
    ("from_nodes", "--from-nodes"),
    ("to_nodes", "--to-nodes"),
    ("from_inputs", "--from-inputs"),
    ("to_outputs", "--to-outputs"),
    ("namespaces", "--namespaces"),
)


def params_value(value: Any) -> str:
    """``value`` as ``--params`` text that parses back to it (``fluxir.parameters.config.parse_overrides``): plain where
    that round-trips (``data/photos``, ``0.5``), else JSON, which is YAML flow syntax (``[[512, 512]]``, ``"1"``)."""
    from fluxir.parameters.config import parse_overrides

    texts = [value] if isinstance(value, str) else []
    texts.append(json.dumps(value))
    for text in texts:
        try:
            if parse_overrides([{"k": None}, f"k={text}"])["k"] == value:
                return text
        except ValueError:
            continue
    return json.dumps(str(value))


def rerun_command(run_params: dict[str, Any], cli_options: dict[str, Any] | None = None) -> str:
    """A ``kedro run`` command line that reruns the run of ``run_params`` (Kedro's ``before_pipeline_run``
    record). ``cli_options``: the options of the ``kedro run`` command being run (click's), whose ``-c`` run file,
    ``--conf-source`` and ``--params`` as typed are kept; without them the runtime params are written out."""
    import shlex

    from fluxir.parameters.config import default_env

    cli_options = cli_options or {}
    args = ["kedro", "run", f"--env={run_params.get('env') or default_env()}"]
    if cli_options.get("conf_source"):
        args.append(f"--conf-source={cli_options['conf_source']}")
    if cli_options.get("config"):
        args.append(f"--config={cli_options['config']}")
    pipelines = [p for p in (run_params.get("pipeline_names") or []) if p != DEFAULT_PIPELINE]
    if pipelines:
        args.append(f"--pipelines={','.join(pipelines)}")
    for key, option in _LIST_OPTIONS:
        values = run_params.get(key)
        if values:
            args.append(f"{option}={','.join(str(v) for v in values)}")
    if run_params.get("load_versions"):
        args.append("--load-versions=" + ",".join(f"{k}:{v}" for k, v in run_params["load_versions"].items()))
    if cli_options.get("runner"):  # run_params hold no usable runner name
        args.append(f"--runner={cli_options['runner']}")
    if cli_options.get("runner_params"):
        args.append("--runner-params=" + ",".join(f"{k}={v}" for k, v in cli_options["runner_params"].items()))
    if cli_options.get("is_async"):
        args.append("--async")
    if run_params.get("only_missing_outputs"):
        args.append("--only-missing-outputs")
    if "cli_params" in cli_options:
        args += [f"--params={typed}" for typed in cli_options["cli_params"]]
    else:
        args += [
            f"--params={k}={params_value(v)}" for k, v in flatten_dict(run_params.get("runtime_params") or {}).items()
        ]
    return shlex.join(args)


def kedro_run_options() -> dict[str, Any]:
    """The options of the ``kedro run`` command this process is running (click's), or ``{}`` (a session started
    from Python)."""
    import click

    from fluxir.cli import RUN_FILE_META

    context = click.get_current_context(silent=True)
    if context is None or context.command.name != "run":
        return {}
    return {**context.params, "config": context.meta.get(RUN_FILE_META)}

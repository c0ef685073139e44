"""What a run produced and where: the pairs, the adapter, the evaluation report, restored photos, the MLflow store.

    python -m fluxir.runtime.outputs [--env ENV]        (``make demo`` ends with it, ``--env tiny``)

Each row is read from the environment's catalog (the latest version of each versioned entry), so it names the
files a later ``--load-versions`` or ``make mlflow`` finds, and says what to run where nothing is there yet.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from fluxir.parameters.config import catalog_config, cli_parser, load_catalog

RESTORE_DEFAULT_OUTPUT = "restore_output"  # the catalog entry of restored photos


def _relative(path: Path, project: Path) -> str:
    try:
        return str(path.resolve().relative_to(project.resolve()))
    except ValueError:
        return str(path)


def produced(env: str, project: Path, overrides: list[Any] = ()) -> list[tuple[str, str, str]]:
    """(what, how many, where) of each output of ``env``'s runs under ``project``."""
    import pandas as pd

    from fluxir.compat.kedro import loaded_path

    cwd = Path.cwd()
    os.chdir(project)  # the catalog's paths are the project's
    try:
        catalog = load_catalog(env, project, overrides)
        rows = []
        manifest_path = loaded_path(catalog.get("pairs_manifest"))
        if manifest_path is not None and manifest_path.is_file():
            pairs = pd.read_parquet(manifest_path)
            folder = Path(os.path.commonpath([*map(str, pairs["hq_path"]), *map(str, pairs["lq_path"])]))
            rows.append(("pairs (HQ/LQ)", f"{len(pairs)} pairs", f"{_relative(folder, project)}/"))
        else:
            rows.append(("pairs (HQ/LQ)", "none yet", f"kedro run --env {env} --pipelines=fluxgen"))
        adapter = loaded_path(catalog.get("fluxir_adapter"))
        if adapter is not None and adapter.is_dir():
            rows.append(("FluxIR adapter", f"version {adapter.parent.name}", f"{_relative(adapter, project)}/"))
        else:
            rows.append(("FluxIR adapter", "none yet", f"kedro run --env {env} --pipelines=train"))
        report = loaded_path(catalog.get("evaluation_report_html"))
        if report is not None and report.is_file():
            rows.append(("evaluation report", "Table 1 (HTML)", _relative(report, project)))
        else:
            rows.append(("evaluation report", "none yet", f"kedro run --env {env} --pipelines=evaluate"))
        restored = Path(catalog_config(env, project, overrides)[RESTORE_DEFAULT_OUTPUT]["path"])
        count = sum(1 for _ in restored.rglob("*.png")) if restored.is_dir() else 0
        if count:
            rows.append(("restored photos", f"{count} PNGs", f"{_relative(restored, project)}/"))
        else:
            how = f"kedro run --env {env} --pipelines=restore --params=restore.input_dir=<photos>"
            rows.append(("restored photos", "none yet", how))
        store = project / "mlflow.db"
        runs = "every run" if store.is_file() else "none yet"
        rows.append(("MLflow runs", runs, f"{_relative(store, project)}: make mlflow prints each runs-table address"))
        return rows
    finally:
        os.chdir(cwd)


def table(rows: list[tuple[str, str, str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    return "\n".join(f"  {what:<{widths[0]}}  {count:<{widths[1]}}  {where}" for what, count, where in rows)


def main(argv: list[str] | None = None) -> None:
    """Print what the env's runs produced and where."""
    parser = cli_parser("python -m fluxir.runtime.outputs", main.__doc__, "restore.output_dir=restored")
    args = parser.parse_args(argv)
    project = Path(args.project).resolve()
    print(f"What the runs of env {args.env} produced, and where (under {project}):")
    print(table(produced(args.env, project, args.params)))


if __name__ == "__main__":
    main()

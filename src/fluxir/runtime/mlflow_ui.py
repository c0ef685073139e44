"""``make mlflow``: MLflow's UI on the project's SQLite store, and the address of each experiment's runs table.

    python -m fluxir.runtime.mlflow_ui [--store mlflow.db] [--host 127.0.0.1] [--port 5000]

MLflow 3.17's UI opens an experiment on its GenAI overview (traces, token usage), whatever the experiment's
``mlflow.experimentKind`` tag says; the runs table, where runs are compared, is one click away or at
``http://HOST:PORT/#/experiments/<id>/runs``. This prints that address for every experiment of the store, then
runs ``mlflow ui`` in this process's place (Ctrl-C stops it).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def runs_table_address(host: str, port: int, experiment_id: str) -> str:
    return f"http://{host}:{port}/#/experiments/{experiment_id}/runs"


def experiments(store: Path) -> list[tuple[str, str]]:
    """(name, id) of the store's active experiments that hold runs, by name; none when there is no store yet."""
    if not store.is_file():
        return []
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{store}")
    found = [(e.name, e.experiment_id) for e in client.search_experiments()]
    return sorted((name, eid) for name, eid in found if client.search_runs([eid], max_results=1))


def addresses_text(store: Path, host: str, port: int) -> str:
    found = experiments(store)
    if not found:
        return (
            f"MLflow UI on http://{host}:{port}: no runs in {store} yet (make demo or kedro run writes them); "
            "an experiment's runs table is then at " + runs_table_address(host, port, "<id>")
        )
    width = max(len(name) for name, _ in found)
    lines = [f"MLflow UI on http://{host}:{port} ({store}); the runs table of each experiment:"]
    lines += [f"  {name:<{width}}  {runs_table_address(host, port, eid)}" for name, eid in found]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fluxir.runtime.mlflow_ui", description=__doc__.splitlines()[0])
    parser.add_argument("--store", default="mlflow.db", help="the SQLite tracking store (conf/base/mlflow.yml's)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 exposes it to the network)")
    parser.add_argument("--port", type=int, default=5000)
    args = parser.parse_args(argv)
    store = Path(args.store).resolve()
    print(addresses_text(store, args.host, args.port), flush=True)
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", f"sqlite:///{store}"]
    os.execv(sys.executable, [*command, "--host", args.host, "--port", str(args.port)])


if __name__ == "__main__":
    main()

"""Export nodes: the dataset's shards, card and upload are ``fluxir.export.build``'s; the adapter with its card."""

import logging
import os
from pathlib import Path
from typing import Any

import pandas as pd

from fluxir.export.build import export_dataset as export_dataset
from fluxir.export.build import push_dataset as push_dataset

log = logging.getLogger(__name__)


def export_adapter(
    adapter: Any, means: pd.DataFrame, report_md: str, folder: Path, model: str, export: dict[str, Any]
) -> dict[str, Any]:
    """Write the adapter with LICENSE, NOTICE and a model card into ``folder``.

    The card's evaluation table is the FluxIR rows of ``evaluation_means`` only when the latest evaluation report
    names this adapter's fingerprint (it evaluated these weights); otherwise the card says it was not evaluated.
    """
    from fluxir.datasets import require_adapter
    from fluxir.export.build import evaluation_for
    from fluxir.export.cards import TINY_ADAPTER_NOTE

    adapter = require_adapter(adapter, "kedro run --pipeline=export_adapter")
    evaluation = evaluation_for(adapter, means, report_md)
    base_model = export["license_model"] or model
    adapter.save_pretrained(
        folder,
        base_model=base_model,
        license=export["license"],
        evaluation=evaluation,
        usage_path=os.path.relpath(folder),  # the project's folder, where `kedro run` ran
        note=TINY_ADAPTER_NOTE if export["tiny_models"] else "",
    )
    log.info("Adapter for %s exported to %s", base_model, folder)
    return {"folder": str(folder), "base_model": base_model, "evaluated": not evaluation.startswith("Not evaluated")}

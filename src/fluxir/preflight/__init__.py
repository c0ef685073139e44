"""The preflight check of a real run, without GPU time: one OK / WARN / FAIL table of everything it needs.

``models`` checks the models, ``machine`` the rest, ``checks`` runs them all; a check returns findings and never
raises for a problem it finds. This module imports nothing of fluxir: the model card reads the budgets too.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

# GB per GPU a real run needs (docs/full_scale.md "Memory"); training's comes from the memory model's table.
BUDGET_GB = {"generation": 40, "restoration": 32}
MODEL_ROLES = ("fluxgen.model", "train.model", "restore.model", "evaluate.restore.model")  # pipeline folders


@dataclass(frozen=True)
class Finding:
    status: str  # "OK", "WARN" or "FAIL"
    area: str
    item: str
    detail: str


def lookup(params: Mapping[str, Any], *keys: str, default: Any = None) -> Any:
    """``params[keys[0]][keys[1]]...``, or ``default`` where a key or a level is missing."""
    node: Any = params
    for key in keys:
        if not isinstance(node, Mapping) or key not in node:
            return default
        node = node[key]
    return node


def train_memory_table() -> dict[str, Any]:
    """``fluxir/configs/train_memory.json``, written by ``benchmarks/train_memory.py --write``."""
    return json.loads((resources.files("fluxir") / "configs" / "train_memory.json").read_text())

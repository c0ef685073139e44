"""What the preflight checks share: one line of the report, reading a nested parameter that may be absent, and
the accelerator memory budgets (the model card, ``fluxir.export.cards.memory_text``, states them too; this module
imports nothing of fluxir, so both can read it)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

# GB per GPU (of the card's label) a real run needs, from docs/full_scale.md "Memory"; training's comes from the
# memory model's table (train_memory_table).
BUDGET_GB = {"generation": 40, "restoration": 32}


def train_memory_table() -> dict[str, Any]:
    """The training memory model's table, ``fluxir/configs/train_memory.json`` (``benchmarks/train_memory.py
    --write`` writes it)."""
    return json.loads((resources.files("fluxir") / "configs" / "train_memory.json").read_text())


@dataclass(frozen=True)
class Finding:
    """One line of the report."""

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

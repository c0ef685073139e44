"""One line of the preflight report, and reading a nested parameter that may be absent."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


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

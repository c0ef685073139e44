"""The ``export.*`` parameters checked before a run: every problem at once, naming the parameter and the fix.

The licence is checked where it is looked up (the export nodes), because which model it belongs to depends on
the pipeline: ``fluxgen.model`` for the dataset, ``train.model`` for the adapter.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fluxir.export.dataset import FORMATS
from fluxir.parameters.config import is_number

KEYS = (
    "format",
    "max_shard_mb",
    "include_generated",
    "tiny_models",
    "title",
    "license_model",
    "license",
    "push_to_hub",
    "repo_id",
    "private",
    "hub_endpoint",
)
SWITCHES = ("include_generated", "tiny_models", "push_to_hub", "private")


def export_problems(export: Mapping[str, Any]) -> list[str]:
    """Messages for bad ``export.*`` values (empty: fine)."""
    found = []
    unknown = sorted(set(export) - set(KEYS))
    missing = [k for k in KEYS if k not in export]
    if unknown:
        found.append(f"unknown export parameter(s) {unknown}; valid: {sorted(KEYS)} (docs/sharing.md)")
    if missing:
        found.append(f"export is missing {missing}: conf/base/parameters_export.yml defines them")
        return found
    if export["format"] not in FORMATS:
        found.append(f"export.format must be one of {list(FORMATS)}, got {export['format']!r}")
    size = export["max_shard_mb"]
    if not is_number(size) or size <= 0:
        found.append(f"export.max_shard_mb must be a positive number of megabytes (1e6 bytes), got {size!r}")
    found += [
        f"export.{k} must be true or false, got {export[k]!r}" for k in SWITCHES if not isinstance(export[k], bool)
    ]
    repo = export["repo_id"]
    if export["push_to_hub"] is True and not (isinstance(repo, str) and repo.count("/") == 1):
        found.append(
            f"export.push_to_hub is true but export.repo_id is {repo!r}: set it to <user or organisation>/<name> "
            "(e.g. --params export.repo_id=me/fluxgen-pairs) or set export.push_to_hub=false"
        )
    licence = export["license"]
    if licence is not None and not (isinstance(licence, Mapping) and "license" in licence):
        found.append(
            f"export.license {licence!r} must be null or a mapping with `license` (and `license_name`, "
            "`license_link` for `other`)"
        )
    return found

"""``python -m fluxir.preflight``'s table: every check of :mod:`fluxir.preflight` run for one environment."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fluxir.parameters.config import catalog_config, load_params
from fluxir.preflight import MODEL_ROLES, Finding, lookup, machine
from fluxir.preflight.models import check_adapter, check_content_filter, check_model_folder


def run_checks(project: Path, env: str, overrides: list[str] | None = None) -> list[Finding]:
    """All findings for a Kedro environment (``overrides`` as ``kedro run --params``)."""
    params = load_params(env, overrides or [], project)
    findings: list[Finding] = []
    cache: dict[str, Any] = {}
    checked: dict[str, tuple[str, str]] = {}  # folder -> (the role it was checked for, its worst status)
    for role in MODEL_ROLES:
        source = lookup(params, *role.split("."))
        if source is None:
            continue
        if str(source) in checked:
            first, status = checked[str(source)]
            findings.append(Finding(status, "model", role, f"same folder as {first} (see there)"))
            continue
        found = check_model_folder(role, source, cache)
        worst = next((s for s in ("FAIL", "WARN") if any(f.status == s for f in found)), "OK")
        checked[str(source)] = (role, worst)
        findings += found
    findings += check_adapter(project, env, lookup(params, "restore", "model"), cache)
    findings += check_content_filter(params, project)
    findings += machine.check_baselines(params)
    findings += machine.check_iqa(params)
    findings += machine.check_benchmarks(params, catalog_config(env, project, overrides or []))
    findings += machine.check_disk(params, project)
    findings += machine.check_accelerator(params)
    findings += machine.check_processes(params)
    findings += machine.check_versions(project)
    return findings


def format_report(findings: list[Finding]) -> str:
    width = max((len(f.item) for f in findings), default=4)
    lines = [f"{f.status:<4}  {f.area:<11}  {f.item:<{width}}  {f.detail}" for f in findings]
    failed = sum(f.status == "FAIL" for f in findings)
    warned = sum(f.status == "WARN" for f in findings)
    lines.append(
        f"{len(findings)} checks: {failed} FAIL, {warned} WARN"
        + (" -- fix every FAIL before a long run" if failed else "")
    )
    return "\n".join(lines)

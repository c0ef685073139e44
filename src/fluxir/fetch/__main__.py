"""``python -m fluxir.fetch``: list, plan or fetch, then the preflight table.

Exit status: 0 when everything is in place, 1 when an item could not be fetched or the disk is too small, 2 when
the fetch succeeded but the preflight check has a FAIL.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from fluxir.fetch.manifest import GROUPS, HUB_FILES, Item, Manifest, build
from fluxir.fetch.steps import DiskSpaceError, Step, check_disk, plan, run
from fluxir.parameters.config import catalog_config, cli_parser, load_params


def _size(n: int | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000


def _size_line(item: Item) -> str:
    if item.size is None:
        return "unknown: no publisher or record states it; checked against what the server announces"
    if not item.size_approx:
        return _size(item.size) + (f" ({item.size} bytes)" if item.size >= 1000 else "")
    if item.files:
        return (
            f"~{_size(item.size)}: {len(item.files)} large files of exact size (below) and small config "
            "files; each download is checked against what the hub states"
        )
    return f"~{_size(item.size)} (a rounded figure; the download is checked against what the server announces)"


def format_list(manifest: Manifest) -> str:
    lines = []
    for item in manifest.items:
        lines.append(f"[{item.group}] {item.name}")
        lines.append(f"    from    {item.source}")
        if item.allow_patterns:
            lines.append(f"    files   {' '.join(item.allow_patterns)}")
        lines.append(f"    size    {_size_line(item)}")
        lines += [f"            {_size(n):>8}  {name}" for name, n in item.files]
        hosted = (item.url or "").startswith(HUB_FILES)
        stated = "the hub states it per LFS file" if hosted or item.repo else "not published"
        lines.append(f"    sha256  {item.sha256 or stated}")
        if item.extract:
            lines += [f"    unpack  {pattern}  ->  {folder}" for pattern, folder in item.extract]
        else:
            lines.append(f"    to      {item.destination}")
        lines.append(f"    for     {', '.join(item.used_by)}")
        if item.note:
            lines.append(f"    note    {item.note}")
    lines += [f"not in this env: {line}" for line in manifest.unconfigured]
    return "\n".join(lines)


def format_plan(steps: list[Step]) -> str:
    width = max((len(s.item.name) for s in steps), default=4)
    lines = [
        f"{s.state:<7}  {s.item.name:<{width}}  {_size(s.size) if s.state == 'fetch' else '':>8}  "
        f"{s.item.destination}" + (f"  ({s.detail})" if s.detail else "")
        for s in steps
    ]
    todo = [s for s in steps if s.state == "fetch"]
    lines.append(
        f"{len(todo)} to fetch ({_size(sum(s.size or 0 for s in todo))}"
        + (f" + {unknown} of unknown size" if (unknown := sum(s.size is None for s in todo)) else "")
        + f"); {sum(s.state == 'present' for s in steps)} present; "
        + f"{sum(s.state == 'problem' for s in steps)} problem(s)"
    )
    return "\n".join(lines)


def format_results(results: list[tuple[Step, str, bool]]) -> str:
    width = max((len(s.item.name) for s, _, _ in results), default=4)
    return "\n".join(f"{'OK' if ok else 'FAIL':<4}  {s.item.name:<{width}}  {outcome}" for s, outcome, ok in results)


def _groups(text: str) -> tuple[str, ...]:
    groups = tuple(g.strip() for g in text.split(",") if g.strip())
    unknown = sorted(set(groups) - set(GROUPS))
    if unknown or not groups:
        raise SystemExit(f"--only {text!r}: unknown group(s) {unknown}; choose from {','.join(GROUPS)}")
    return groups


def main(argv: list[str] | None = None) -> int:
    parser = cli_parser(
        "python -m fluxir.fetch",
        "Download every weight file and benchmark of a full run, verified, "
        "to where the environment's parameters expect them.",
        "iqa.weights_dir=/models/iqa",
    )
    parser.add_argument("--only", type=_groups, default=GROUPS, help=f"comma-separated subset of {','.join(GROUPS)}")
    parser.add_argument(
        "--list", action="store_true", help="print the manifest (what, from where, size, digest, where to)"
    )
    parser.add_argument("--dry-run", action="store_true", help="say what a run would download on this machine")
    parser.add_argument("--mirror", help="a folder or http(s) URL serving the same file names (air-gapped clusters)")
    args = parser.parse_args(argv)
    project = Path(args.project).resolve()
    params = load_params(args.env, args.params, project)
    manifest = build(params, project, args.only, catalog_config(args.env, project, args.params))
    if args.list:
        print(format_list(manifest))
        return 0
    steps = plan(manifest, args.mirror)
    print(format_plan(steps))
    if args.dry_run:
        return 0
    try:
        for warning in check_disk(steps):
            print(f"warning: {warning}")
    except DiskSpaceError as err:
        print(f"FAIL  disk: {err}")
        return 1
    results = run(steps, args.mirror)
    print(format_results(results))
    if not all(ok for _, _, ok in results):
        print("some items were not fetched (see FAIL above); run again once fixed: finished files are kept")
        return 1
    from fluxir.preflight.checks import format_report, run_checks

    findings = run_checks(project, args.env, args.params)
    print(format_report(findings))
    return 2 if any(f.status == "FAIL" for f in findings) else 0


if __name__ == "__main__":
    # without a terminal the progress bars are log lines (fluxir.runtime.progress): they go to stderr
    logging.basicConfig(format="%(message)s")
    logging.getLogger("fluxir").setLevel(logging.INFO)
    sys.exit(main())

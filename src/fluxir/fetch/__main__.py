"""``python -m fluxir.fetch``: parse the arguments, then list, plan or fetch (see :mod:`fluxir.fetch`).

Exit status: 0 when everything is in place (the preflight check's table follows), 1 when an item
could not be fetched or the disk is too small, 2 when the fetch succeeded but the check has a FAIL.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from fluxir.fetch import DiskSpaceError, check_disk, format_list, format_plan, format_results, plan, run
from fluxir.fetch.manifest import GROUPS, build
from fluxir.parameters.config import catalog_config, cli_parser, load_params


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

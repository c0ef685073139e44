"""``python -m fluxir.preflight``: the preflight table; exit status 1 on a FAIL."""

from __future__ import annotations

import sys
from pathlib import Path

from fluxir.parameters.config import cli_parser
from fluxir.preflight.checks import format_report, run_checks


def main(argv: list[str] | None = None) -> int:
    # A check is for the configuration the run will read: the same default env as kedro run.
    parser = cli_parser("python -m fluxir.preflight", "Preflight check before a long run.", "fluxgen.num_images=350000")
    args = parser.parse_args(argv)
    findings = run_checks(Path(args.project).resolve(), args.env, args.params)
    print(format_report(findings))
    return 1 if any(f.status == "FAIL" for f in findings) else 0


if __name__ == "__main__":
    sys.exit(main())

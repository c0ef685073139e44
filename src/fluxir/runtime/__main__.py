"""``python -m fluxir.runtime --parent PID -- command...``: the guard a node's child job runs under
(``fluxir.runtime.launch.guard``); started by ``fluxir.runtime.launch.run_guarded``, not by hand."""

from __future__ import annotations

import argparse
import sys

from fluxir.runtime.launch import guard


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fluxir.runtime", description=guard.__doc__)
    parser.add_argument("--parent", type=int, required=True, help="pid whose end ends the command's process group")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command after --")
    sys.exit(guard(args.parent, command))


if __name__ == "__main__":
    main()

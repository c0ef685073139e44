"""fluxir file for ensuring the package is executable as `fluxir` and `python -m fluxir`."""

import sys
from pathlib import Path

from kedro.framework.cli.utils import find_run_command
from kedro.framework.project import configure_project


def main(*args, **kwargs):
    package_name = Path(__file__).parent.name
    configure_project(package_name)
    kwargs["standalone_mode"] = not hasattr(sys, "ps1")  # interactive: click must not exit the interpreter
    return find_run_command(package_name)(*args, **kwargs)


if __name__ == "__main__":
    main()

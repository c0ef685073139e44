#!/usr/bin/env bash
# Create .venv in the repo root and install fluxir with everything its tests need.
# Usage: scripts/setup.sh [--no-test-extras]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade "pip>=24" wheel "setuptools>=68,<82"
# torch first, pinned: an unpinned torch pulls a multi-GB CUDA build of a newer release.
python -m pip install -q torch==2.14.1 torchvision==0.29.1
# basicsr's setup.py imports torch at build time, so it cannot build in an isolated env.
python -m pip install -q --no-build-isolation basicsr==1.4.2
extras=".[test]"; [ "${1:-}" = "--no-test-extras" ] && extras="."
python -m pip install -q -e "$extras"
python -m pip check

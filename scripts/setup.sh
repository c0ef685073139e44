#!/usr/bin/env bash
# Create .venv in the repo root and install fluxir (make demo: --no-test-extras), or fluxir with everything its
# tests need (make setup / make test).
# Usage: scripts/setup.sh [--no-test-extras]
# With the test extras it also installs Debian's `chromium` for the browser tests (tests/pipelines/test_viz.py,
# tests/pipelines/test_mlflow_compare.py) when it is missing and this user is root or has password-less sudo;
# otherwise it says so and goes on (those tests are then skipped). FLUXIR_SKIP_CHROMIUM=1 skips that step.
# --no-test-extras installs no test tools and no Chromium.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
with_tests=1; [ "${1:-}" = "--no-test-extras" ] && with_tests=0
# Measured with du -sh on a complete .venv (2026-12): 7.9 GB, of which torch's CUDA build (torch, nvidia-*,
# triton) is 5.3 GB and the test tools (pytest, playwright, mkdocs, jupyter kernel, ruff) about 0.2 GB.
echo "setup: installing fluxir into .venv: about 7.7 GB on disk (5.3 GB of it the CUDA build of torch), from your" \
     "package index; the first time takes minutes"
if [ "$with_tests" = 1 ]; then
    echo "setup: with the test tools (~0.2 GB more) and, as root or with password-less sudo, Debian's chromium" \
         "(apt-get) for the browser tests; the demo alone needs neither: make demo"
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade "pip>=24" wheel "setuptools>=68,<82"
# torch first, pinned: an unpinned torch pulls a multi-GB CUDA build of a newer release.
python -m pip install -q torch==2.14.1 torchvision==0.29.1
# basicsr's setup.py imports torch at build time, so it cannot build in an isolated env.
python -m pip install -q --no-build-isolation basicsr==1.4.2
extras=".[test]"; [ "$with_tests" = 0 ] && extras="."
python -m pip install -q -e "$extras"
python -m pip check

install_chromium() {
    if [ "${FLUXIR_SKIP_CHROMIUM:-0}" = 1 ]; then
        echo "setup: FLUXIR_SKIP_CHROMIUM=1: not installing Chromium (the browser tests will be skipped)"; return 0
    fi
    if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 \
        || { [ -n "${FLUXIR_CHROMIUM:-}" ] && command -v "$FLUXIR_CHROMIUM" >/dev/null 2>&1; }; then
        return 0
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "setup: no apt-get here: install Chromium yourself or set FLUXIR_CHROMIUM (the browser tests will be skipped)"
        return 0
    fi
    local sudo=()
    if [ "$(id -u)" != 0 ]; then
        if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
            sudo=(sudo -n)
        else
            echo "setup: not root and no password-less sudo: skipping Chromium;" \
                 "run 'sudo apt-get install -y chromium' for the browser tests (they are skipped until then)"
            return 0
        fi
    fi
    echo "setup: installing Debian's chromium for the browser tests (apt-get)"
    if ${sudo[@]+"${sudo[@]}"} apt-get update -qq \
        && ${sudo[@]+"${sudo[@]}"} env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; then
        echo "setup: $(chromium --version 2>/dev/null || echo 'chromium installed')"
    else
        echo "setup: apt-get could not install chromium; the browser tests will be skipped"
    fi
}
[ "$with_tests" = 1 ] && install_chromium
exit 0

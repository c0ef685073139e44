"""The suite's distribution over workers does what tests/conftest.py and the Makefile rely on."""

from __future__ import annotations

import os

import pytest

from conftest import HEAVIEST_FIRST


@pytest.mark.xdist_group("test_suite_distribution")
def test_a_grouped_test_runs_in_its_group(request):
    """Module fixtures are built once because --dist loadgroup keeps a group on one worker; a pytest/xdist pair that
    drops the group (pytest-dev/pytest-xdist#1386) hands each test to any worker and builds them again."""
    if os.environ.get("PYTEST_XDIST_WORKER") is None or not getattr(request.config.option, "loadgroup", False):
        pytest.skip("not distributed with --dist loadgroup")
    assert request.node.nodeid.endswith("@test_suite_distribution"), request.node.nodeid


def test_the_heaviest_units_come_first(request):
    """conftest's order puts a listed unit before every unlisted test, in the listed order."""
    items = request.session.items
    ranks = []
    for item in items:
        groups = {str(m.args[0]) for m in item.iter_markers("xdist_group") if m.args}
        listed = [i for i, key in enumerate(HEAVIEST_FIRST) if key in groups or item.nodeid.startswith(key)]
        ranks.append(listed[0] if listed else len(HEAVIEST_FIRST))
    assert ranks == sorted(ranks)

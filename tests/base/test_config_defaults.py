"""One source for every default: each config class's Python defaults equal conf/base (issue 11).

The YAML files are what users read and what `kedro run` uses; the dataclass defaults are what a script,
a benchmark or a test gets when it builds a config in Python. A field missing from the YAML, or a value
that differs, fails here with the field's name.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from fluxir.config import load_params
from fluxir.evaluation.testsets import BenchmarkSpec
from fluxir.fluxgen.degrade import DegradationConfig
from fluxir.fluxgen.generate import GenerationConfig
from fluxir.iqa import FULL_REFERENCE_DEFAULT, NO_REFERENCE_DEFAULT
from fluxir.models.adapter import FluxIRConfig
from fluxir.restoration.files import FILE_PARAMS
from fluxir.restoration.sampler import RestoreConfig
from fluxir.training.config import TrainConfig
from conftest import REPO



@pytest.fixture(scope="module")
def base() -> dict[str, Any]:
    return load_params("base", [], REPO)


def _plain(value: Any) -> Any:
    """Tuples as lists (YAML has no tuples), recursively, so values compare as the YAML writes them."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _defaults(config_class: type) -> dict[str, Any]:
    return {f.name: _plain(f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default)
            for f in dataclasses.fields(config_class)}


def _mismatches(config_class: type, yaml: dict[str, Any], complete: bool = True) -> list[str]:
    """Fields whose default differs from the YAML (and, with ``complete``, fields the YAML leaves out)."""
    out = []
    for name, default in _defaults(config_class).items():
        if name not in yaml:
            if complete:
                out.append(f"{name}: missing from the YAML (Python default {default!r})")
        elif _plain(yaml[name]) != default:
            out.append(f"{name}: Python {default!r} != YAML {_plain(yaml[name])!r}")
    return out


def test_generation_defaults_are_the_yaml(base):
    assert _mismatches(GenerationConfig, base["fluxgen"]) == []


def test_iqa_defaults_are_the_yaml(base):
    assert list(NO_REFERENCE_DEFAULT) == base["iqa"]["metrics"]  # FluxGen's selection metrics (paper footnote 2)
    assert list(FULL_REFERENCE_DEFAULT) == list(base["evaluate"]["metrics"]["full_reference"].values())
    assert list(NO_REFERENCE_DEFAULT) == list(base["evaluate"]["metrics"]["no_reference"].values())


def test_select_and_degrade_defaults_are_the_yaml(base):
    assert base["select"]["percentile"] == 5  # keep the top 95% (paper Sec. 3.1); no Python default exists
    # The YAML sets only the crops and leaves SeeSR's degradation settings to the dataclass: those it sets agree.
    assert _mismatches(DegradationConfig, base["degrade"]["config"], complete=False) == []
    assert DegradationConfig.from_dict(base["degrade"]["config"]) == DegradationConfig()


def test_train_defaults_are_the_yaml(base):
    train = dict(base["train"])
    assert _mismatches(TrainConfig, {**train, "adapter": {}}) == []  # the adapter overrides are checked below
    assert _mismatches(FluxIRConfig, train["adapter"], complete=False) == []
    assert TrainConfig.from_params(train) == dataclasses.replace(TrainConfig(), adapter=train["adapter"])


def test_restore_and_evaluate_defaults_are_the_yaml(base):
    restore = {k: v for k, v in base["restore"].items() if k not in FILE_PARAMS}
    assert _mismatches(RestoreConfig, restore) == []
    # evaluate.restore sets what evaluation needs; what it leaves out takes the same defaults as restore.
    assert _mismatches(RestoreConfig, base["evaluate"]["restore"], complete=False) == []


def test_benchmark_defaults_are_the_yaml(base):
    """The paper's sizes and the seed are defaults; name, kind, folders and counts are per benchmark."""
    paper = {k: v for k, v in _defaults(BenchmarkSpec).items() if k in ("hq_size", "lq_size", "seed", "strip_suffix")}
    for key, entry in base["evaluate"]["benchmarks"].items():
        assert {k: entry[k] for k in paper if k in entry} == {k: paper[k] for k in paper if k in entry}, key

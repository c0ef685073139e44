"""fluxir.parameters.config: the one validation table and the config loader's settings."""

from __future__ import annotations

import numpy as np
import pytest

from fluxir.parameters.config import CONFIG_LOADER_ARGS, Rule, check_fields, is_int


@pytest.mark.parametrize(
    ("rule", "good", "bad"),
    [
        (Rule("n", "positive_int"), [1, 7, np.int64(3)], [0, -1, 2.0, True, "3", None]),
        (Rule("n", "nonneg_int"), [0, 5], [-1, 1.5, False]),
        (Rule("n", "integer"), [-3, 0, 9], [1.0, True, "2"]),
        (Rule("n", "multiple_of", 16), [16, 64], [0, 8, 24, 32.0]),
        (Rule("n", "positive_number"), [0.1, 3], [0, -2, True, "1"]),
        (Rule("n", "interval", "[0, 1)"), [0, 0.5], [1, -0.1]),
        (Rule("n", "interval", "[0, 1]"), [0, 1, 0.3], [1.1, -0.1, None]),
        (Rule("n", lambda v: v in (1, 3), must="1 or 3"), [1, 3], [2, None]),
        (Rule("n", "choice", ("a", "b")), ["a"], ["c", None]),
        (Rule("n", "positive_int", nullable=True), [None, 2], [0]),
    ],
)
def test_each_kind_accepts_and_refuses(rule, good, bad):
    for value in good:
        check_fields({"n": value}, [rule], "g.")
    for value in bad:
        with pytest.raises(ValueError, match=r"^g\.n must be .*, got "):
            check_fields({"n": value}, [rule], "g.")


def test_message_names_the_field_the_value_and_the_note():
    rules = [
        Rule("steps", "positive_int", note=" (paper: 20)"),
        Rule(
            "size",
            "multiple_of",
            16,
            must="a positive multiple of 16 (VAE)",
            note=lambda v: f"; nearest valid: {round(v / 16) * 16}",
        ),
    ]
    with pytest.raises(ValueError, match=r"^restore\.steps must be a positive integer, got True \(paper: 20\)$"):
        check_fields({"steps": True, "size": 16}, rules, "restore.")
    with pytest.raises(
        ValueError, match=r"^size must be a positive multiple of 16 \(VAE\), got 50; nearest valid: 48$"
    ):
        check_fields({"steps": 1, "size": 50}, rules, "")
    with pytest.raises(ValueError, match="unknown kind 'positive'"):
        Rule("x", "positive")
    with pytest.raises(ValueError, match="a predicate needs `must`"):
        Rule("x", lambda v: v == 1)
    assert is_int(3, 3) and not is_int(2, 3) and not is_int(True)


def test_settings_take_the_loader_arguments_from_config():
    import fluxir.settings

    assert fluxir.settings.CONFIG_LOADER_ARGS is CONFIG_LOADER_ARGS
    assert CONFIG_LOADER_ARGS["merge_strategy"] == {"parameters": "soft"}


@pytest.mark.starts_process("a fresh interpreter is the only way to see what an import pulls in")
def test_library_code_does_not_import_the_kedro_settings_module():
    import subprocess
    import sys

    probe = (
        "import sys, fluxir.parameters.config, fluxir.runtime.hooks, fluxir.io.store, fluxir.runtime.tracking; "
        "print(sorted(m for m in sys.modules if m == 'fluxir.settings'))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", "fluxir.settings imports the hooks; library modules must not import it"

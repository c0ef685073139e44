"""Progress: a tqdm bar on a terminal, plain log lines elsewhere."""

from __future__ import annotations

import logging

import pytest

from fluxir.runtime.progress import progress


def _lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "fluxir.runtime.progress"]


def test_log_mode_logs_every_ten_percent(monkeypatch, caplog):
    monkeypatch.setenv("FLUXIR_PROGRESS", "log")
    with caplog.at_level(logging.INFO, logger="fluxir.runtime.progress"):
        assert list(progress(range(25), desc="d")) == list(range(25))
    lines = _lines(caplog)
    percents = [int(line.split("(")[1].split("%")[0]) for line in lines if "%)" in line]
    assert [p // 10 for p in percents] == list(range(1, 11))  # one line as each new 10 % step is crossed
    assert all(line.startswith("d:") for line in lines)


def test_manual_updates_log_once_per_step_and_finish(monkeypatch, caplog):
    monkeypatch.setenv("FLUXIR_PROGRESS", "log")
    with caplog.at_level(logging.INFO, logger="fluxir.runtime.progress"):
        with progress(total=7, initial=2, desc="gen", unit="img") as bar:
            for _ in range(5):
                bar.update(1)
                bar.set_postfix(loss=0.123456, batch="b")
    lines = _lines(caplog)
    assert len([line for line in lines if "%)" in line]) == 5  # 3/7..7/7 each cross a new 10 % step
    assert lines[0].startswith("gen: 3/7 img (43%)")
    assert "done in" in lines[-1] and lines[-1].startswith("gen: 7/7 img (100%)")
    assert lines[-1].endswith("[loss=0.1235, batch=b]")  # the postfix, floats to 4 significant digits


def test_off_and_bar_modes(monkeypatch, caplog):
    monkeypatch.setenv("FLUXIR_PROGRESS", "off")
    with caplog.at_level(logging.INFO, logger="fluxir.runtime.progress"):
        assert list(progress(range(5), desc="x")) == list(range(5))
    assert _lines(caplog) == []
    monkeypatch.setenv("FLUXIR_PROGRESS", "bar")
    from tqdm.auto import tqdm

    bar = progress(total=3, desc="x")
    assert isinstance(bar, tqdm)
    bar.close()


def test_bad_mode_is_an_error(monkeypatch):
    monkeypatch.setenv("FLUXIR_PROGRESS", "sometimes")
    with pytest.raises(ValueError, match="FLUXIR_PROGRESS='sometimes'"):
        progress(range(3))

"""Metric names with characters MLflow refuses (pyiqa's ``clipiqa+_vitL14_512``, the paper's CLIP-IQA+) reach
MLflow under the keys of ``fluxir.runtime.tracking.mlflow_key``: the selection and evaluation nodes' outputs are
saved through the catalog's kedro-mlflow dataset into a real SQLite store and read back."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fluxir.evaluation.report import PER_IMAGE_COLUMNS
from fluxir.pipelines.evaluate.nodes import summarize_metrics
from fluxir.pipelines.fluxgen.nodes import select_by_iqa
from fluxir.runtime.tracking import mlflow_key, mlflow_metric_values

BASE_METRICS = ["clipiqa+_vitL14_512", "maniqa-pipal", "musiq"]  # conf/base/parameters_fluxgen.yml: iqa.metrics


def test_mlflow_key_maps_plus_and_refused_characters():
    assert mlflow_key("threshold.clipiqa+_vitL14_512") == "threshold.clipiqaplus_vitL14_512"
    assert mlflow_key("a:b*c(d)") == "a_b_c_d_"
    assert mlflow_key("eval.RealSR.fluxir.PSNR.y_crop4") == "eval.RealSR.fluxir.PSNR.y_crop4"  # allowed: kept
    with pytest.raises(ValueError, match="two metrics map to the MLflow key 'x_y'"):
        mlflow_metric_values({"x:y": 1.0, "x*y": 2.0})


def _save_and_read_back(tmp_path, prefix: str, metrics: dict) -> dict[str, float]:
    import mlflow
    from kedro_mlflow.io.metrics import MlflowMetricsHistoryDataset

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")  # conftest restores MLFLOW_TRACKING_URI
    experiment = mlflow.set_experiment("mlflow-keys")  # not the id an earlier test left active in this process
    with mlflow.start_run(experiment_id=experiment.experiment_id) as run:
        MlflowMetricsHistoryDataset(prefix=prefix).save(metrics)  # as conf/base/catalog*.yml saves them
    return mlflow.get_run(run.info.run_id).data.metrics


def test_base_metric_names_go_through_selection_and_evaluation_into_mlflow(tmp_path):
    rng = np.random.default_rng(0)
    scores = pd.DataFrame({name: rng.normal(size=40) for name in BASE_METRICS})
    table, metrics, figure = select_by_iqa(scores, BASE_METRICS, 5)
    figure.clf()
    stored = _save_and_read_back(tmp_path / "select", "select", metrics)
    assert stored["select.threshold.clipiqaplus_vitL14_512"] == pytest.approx(table["clipiqa+_vitL14_512_threshold"][0])
    assert stored["select.n_scored"] == 40 and "select.threshold.maniqa-pipal" in stored

    # A stand-in row: its MLflow key names the scorer (fluxir.evaluation.report.metric_name).
    rows = [
        ["RealSR", "fluxir", f"im{i}", "CLIPIQA", "clipiqa+_vitL14_512", 0.5 + i, "rgb", 0, True, True] for i in (0, 1)
    ]
    per_image = pd.DataFrame(rows, columns=PER_IMAGE_COLUMNS)
    _, eval_metrics = summarize_metrics(per_image)
    stored = _save_and_read_back(tmp_path / "eval", "eval", eval_metrics)
    assert stored == {"eval.RealSR.fluxir.CLIPIQA_standin_clipiqaplus_vitL14_512.rgb_crop0": pytest.approx(1.0)}

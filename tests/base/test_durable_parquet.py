"""The project's parquet tables are written atomically and flushed: a table at its path is complete."""

from __future__ import annotations

import pandas as pd
import pytest
from kedro.io import DatasetError
from kedro.io.core import Version
from kedro_datasets.pandas import ParquetDataset

from fluxir.datasets import DurableParquetDataset, write_parquet
from fluxir.parameters.config import load_catalog

from conftest import REPO

TABLE = pd.DataFrame({"image_id": [3, 1, 2], "path": ["a.png", "b.png", "c.png"], "score": [0.5, 0.25, 1.0]})


def _files(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_a_versioned_table_round_trips_and_leaves_no_temporary_file(tmp_path):
    dataset = DurableParquetDataset(filepath=str(tmp_path / "scores.parquet"), version=Version(None, None))
    dataset.save(TABLE)
    pd.testing.assert_frame_equal(dataset.load(), TABLE)
    files = _files(tmp_path)
    assert len(files) == 1
    assert files[0].startswith("scores.parquet/") and files[0].endswith("/scores.parquet")  # Kedro's version layout
    again = DurableParquetDataset(filepath=str(tmp_path / "scores.parquet"), version=Version(None, None))
    again.save(TABLE.iloc[:1])
    assert len(_files(tmp_path)) == 2
    pd.testing.assert_frame_equal(again.load(), TABLE.iloc[:1])  # the latest version


def test_a_failed_write_leaves_nothing_at_the_path(tmp_path):
    # pyarrow opens the file, then refuses the codec: kedro-datasets' own dataset leaves an empty file behind
    plain = ParquetDataset(filepath=str(tmp_path / "plain.parquet"), save_args={"compression": "no-such-codec"})
    with pytest.raises(DatasetError):
        plain.save(TABLE)
    assert (tmp_path / "plain.parquet").stat().st_size == 0

    path = tmp_path / "durable.parquet"
    durable = DurableParquetDataset(filepath=str(path), save_args={"compression": "no-such-codec"})
    with pytest.raises(DatasetError, match="no-such-codec"):
        durable.save(TABLE)
    assert not path.exists()
    write_parquet(path, TABLE)
    with pytest.raises(Exception, match="no-such-codec"):
        write_parquet(path, TABLE.iloc[:1], compression="no-such-codec")
    pd.testing.assert_frame_equal(pd.read_parquet(path), TABLE)  # the complete old table stays
    assert _files(tmp_path) == ["durable.parquet", "plain.parquet"]  # no temporary file left


def test_every_parquet_table_of_the_catalog_is_durable():
    catalog = load_catalog("base", REPO)
    tables = [name for name in catalog.keys() if isinstance(catalog.get(name), ParquetDataset)]
    for name in ("generated_images", "iqa_scores", "iqa_selection", "pairs_manifest", "benchmark_manifest"):
        assert name in tables
    assert {"train_history", "evaluation_per_image", "evaluation_means"} <= set(tables)
    assert [name for name in tables if type(catalog.get(name)) is not DurableParquetDataset] == []

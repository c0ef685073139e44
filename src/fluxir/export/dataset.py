"""FluxGen's pairs as shards of at most ``max_shard_mb``: Hugging Face parquet (PNG bytes unchanged, ``datasets``
features in the schema so ``load_dataset("parquet")`` decodes them) or WebDataset tars (``<key>.hq.png``, ...,
``<key>.json``)."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

DATA_DIR = "data"
SPLIT = "train"
FORMATS = ("parquet", "webdataset")
GENERATED_COLUMN = "generated"
# Bytes a row adds beyond its PNGs (its other columns; tar headers and padding) and a shard beyond its rows
# (parquet footer and schema); a shard that still comes out too large is split again (``_write_within``).
ROW_OVERHEAD = 2048
SHARD_OVERHEAD = 16384
# The non-image columns of a row and their ``datasets`` dtype, in the parquet schema's order.
COLUMNS = {
    "image_id": "int64",
    "seed": "int64",
    "prompt": "string",
    "width": "int32",
    "height": "int32",
    "lq_width": "int32",
    "lq_height": "int32",
    "hq_sha256": "string",
    "lq_sha256": "string",
    "source_sha256": "string",
    "degradation_seed": "int64",
    "degradation": "string",
}


def iqa_column(metric: str) -> str:
    return f"iqa_{metric}"


def export_table(pairs: pd.DataFrame, selection: pd.DataFrame, metric_names: Sequence[str]) -> pd.DataFrame:
    """One row per pair: the pair manifest joined with its image's seed, prompt and IQA scores."""
    wanted = ["image_id", "seed", "prompt", *metric_names]
    if missing := [c for c in wanted if c not in selection.columns]:
        raise ValueError(
            f"the IQA selection table lacks columns {missing} (has {sorted(selection.columns)}): export reads the "
            "iqa_selection of the same fluxgen run as pairs_manifest; rerun `kedro run --pipeline=fluxgen`"
        )
    scores = selection[wanted].rename(columns={m: iqa_column(m) for m in metric_names})
    table = pairs.merge(scores, on="image_id", how="left", validate="one_to_one", indicator=True)
    if orphans := table.loc[table["_merge"] != "both", "image_id"].tolist():
        raise ValueError(
            f"{len(orphans)} pairs (first ids {orphans[:5]}) have no row in the IQA selection table: pairs_manifest "
            "and iqa_selection come from different fluxgen runs; rerun `kedro run --pipeline=fluxgen`"
        )
    return table.drop(columns="_merge").sort_values("image_id", kind="stable").reset_index(drop=True)


def row_metadata(row: dict[str, Any], metric_names: Sequence[str]) -> dict[str, Any]:
    """The non-image columns of a dataset row (the same in both formats)."""
    meta = {name: int(row[name]) if dtype.startswith("int") else str(row[name]) for name, dtype in COLUMNS.items()}
    meta.update({iqa_column(m): float(row[iqa_column(m)]) for m in metric_names})
    return meta


def dataset_features(metric_names: Sequence[str], include_generated: bool) -> Any:
    from datasets import Features, Image, Value

    images = ["hq", "lq", *([GENERATED_COLUMN] if include_generated else [])]
    columns: dict[str, Any] = {"image_id": Value("int64"), **{name: Image() for name in images}}
    columns.update({name: Value(dtype) for name, dtype in COLUMNS.items()})
    columns.update({iqa_column(m): Value("float64") for m in metric_names})
    return Features(columns)


def image_paths(row: dict[str, Any], include_generated: bool) -> dict[str, str]:
    paths = {"hq": str(row["hq_path"]), "lq": str(row["lq_path"])}
    if include_generated:
        paths[GENERATED_COLUMN] = str(row["source_path"])
    return paths


def plan_shards(row_bytes: Sequence[int], max_bytes: int) -> list[list[int]]:
    """Consecutive row indices grouped so that each group's estimated size stays within ``max_bytes``."""
    shards: list[list[int]] = []
    current: list[int] = []
    size = SHARD_OVERHEAD
    for i, nbytes in enumerate(row_bytes):
        if current and size + nbytes > max_bytes:
            shards.append(current)
            current, size = [], SHARD_OVERHEAD
        current.append(i)
        size += nbytes
    if current:
        shards.append(current)
    return shards


def _write_within(
    rows: list[int], write: Callable[[list[int], Path], None], path: Path, max_bytes: int
) -> list[tuple[list[int], Path]]:
    """Write ``rows`` to ``path``; a shard of several rows over ``max_bytes`` is written again as two halves."""
    write(rows, path)
    if path.stat().st_size <= max_bytes or len(rows) == 1:
        return [(rows, path)]
    path.unlink()
    half = len(rows) // 2
    first = _write_within(rows[:half], write, path.with_name(path.name + "a"), max_bytes)
    return first + _write_within(rows[half:], write, path.with_name(path.name + "b"), max_bytes)


def write_shards(
    table: pd.DataFrame,
    folder: Path,
    fmt: str,
    max_shard_mb: float,
    include_generated: bool,
    metric_names: Sequence[str],
) -> list[str]:
    """Write ``table``'s pairs as ``folder/data/train-XXXXX-of-YYYYY.<parquet|tar>``; returns the shard names
    (relative to ``folder``). ``fmt`` and ``max_shard_mb`` were checked by ``export_problems``."""
    max_bytes = int(float(max_shard_mb) * 1e6)
    records = table.to_dict("records")
    paths = [image_paths(r, include_generated) for r in records]
    for r, p in zip(records, paths, strict=True):
        for column, path in p.items():
            if not Path(path).is_file():
                raise FileNotFoundError(
                    f"{column} image of pair {r['image_id']} is missing: {path}; rerun `kedro run --pipeline=fluxgen` "
                    "(it remakes missing pairs) before exporting"
                )
    row_bytes = [sum(Path(p).stat().st_size for p in ps.values()) + ROW_OVERHEAD for ps in paths]
    out = folder / DATA_DIR
    out.mkdir(parents=True, exist_ok=True)
    if fmt == "parquet":
        features = dataset_features(metric_names, include_generated)

        def write(rows: list[int], path: Path) -> None:
            _write_parquet([records[i] for i in rows], [paths[i] for i in rows], features, metric_names, path)
    else:

        def write(rows: list[int], path: Path) -> None:
            _write_tar([records[i] for i in rows], [paths[i] for i in rows], metric_names, path)

    written: list[tuple[list[int], Path]] = []
    for n, rows in enumerate(plan_shards(row_bytes, max_bytes)):
        written += _write_within(rows, write, out / f".shard-{n:05d}", max_bytes)
    suffix = "parquet" if fmt == "parquet" else "tar"
    names = []
    for n, (_, path) in enumerate(written):
        name = f"{SPLIT}-{n:05d}-of-{len(written):05d}.{suffix}"
        path.rename(out / name)
        names.append(f"{DATA_DIR}/{name}")
    return names


def _write_parquet(
    records: list[dict[str, Any]], paths: list[dict[str, str]], features: Any, metric_names: Sequence[str], path: Path
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = []
    for record, images in zip(records, paths, strict=True):
        row = row_metadata(record, metric_names)
        row.update({col: {"bytes": Path(p).read_bytes(), "path": Path(p).name} for col, p in images.items()})
        rows.append(row)
    table = pa.Table.from_pylist(rows, schema=features.arrow_schema)
    # Small row groups: a reader streaming the shard holds a few images at a time, not the whole shard.
    pq.write_table(table, path, row_group_size=64)


def _write_tar(
    records: list[dict[str, Any]], paths: list[dict[str, str]], metric_names: Sequence[str], path: Path
) -> None:
    with tarfile.open(path, "w") as tar:
        for record, images in zip(records, paths, strict=True):
            key = f"{int(record['image_id']):08d}"
            members = {f"{key}.{col}.png": Path(p).read_bytes() for col, p in images.items()}
            members[f"{key}.json"] = json.dumps(row_metadata(record, metric_names), sort_keys=True).encode()
            for name, data in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                info.mode = 0o644
                tar.addfile(info, io.BytesIO(data))

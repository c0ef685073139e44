"""The evaluation report: the per-image scores (a long table carrying each number's convention, made by ``scores``), the
means laid out like the paper's Table 1 beside its numbers, rendered as Markdown and HTML, and image grids.
A metric whose scorer is not the paper's (a tiny run's stand-in) is labelled STAND-IN wherever its numbers appear."""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from fluxir.evaluation.config import EvaluateConfig
from fluxir.io.images import read_image
from fluxir.iqa import CONVENTION_DEFINITIONS, MetricSpec
from fluxir.restoration.methods import TITLES

# The paper's metrics (Table 1 order) and the pyiqa scorers that compute them (paper footnote 2).
PAPER_METRICS: dict[str, tuple[str, ...]] = {
    "CLIPIQA": ("clipiqa+_vitL14_512",),
    "MUSIQ": ("musiq",),
    "MANIQA": ("maniqa-pipal",),
    "PSNR": ("psnr", "psnry"),
    "SSIM": ("ssim", "ssimc"),
    "LPIPS": ("lpips",),
}
DATASET_ORDER = ("DIV2K-Val", "RealSR", "DrealSR", "RealLQ250")
PAPER_COLUMNS = ("dataset", "metric", "higher_is_better", "method", "value")
PER_IMAGE_COLUMNS = "dataset method image label metric value convention crop_border higher_is_better stand_in".split()
OURS_METHOD = "fluxir"
PAPER_OURS = "FluxIR"
TINY_NOTICE = (
    "TINY RUN - NOT A QUALITY RESULT. The Flux model and the adapter here are tiny and have random weights, "
    "and stand-in metrics replace the paper's scorers. This report proves that the evaluation machinery runs "
    "end to end (benchmarks, restoration, metrics, MLflow, report); its numbers say nothing about image "
    "quality and must not be compared with the paper's."
)


PAPER_SUFFIX = "(copied from the paper)"


def method_title(method: str, tiny_models: bool = False) -> str:
    """Column title of one of this run's methods; with tiny models the learned ones say so."""
    if method in TITLES:
        tiny = tiny_models and method != "bicubic"  # no weights
        return f"{TITLES[method]} (this run{', tiny random weights' if tiny else ''})"
    return f"{method} (your outputs)"


def metric_means(per_image: pd.DataFrame) -> pd.DataFrame:
    """Mean and count per dataset, method and metric (the convention stays in every row)."""
    if missing := [c for c in PER_IMAGE_COLUMNS if c not in per_image.columns]:
        raise ValueError(f"per-image metric table lacks columns {missing}")
    if per_image.empty:
        raise ValueError("the per-image metric table is empty: nothing was scored")
    keys = [c for c in PER_IMAGE_COLUMNS if c not in ("image", "value")]
    return per_image.groupby(keys, sort=False, dropna=False)["value"].agg(mean="mean", n="count").reset_index()


def metric_name(row: Mapping[str, Any]) -> str:
    """``<dataset>.<method>.<label>.<convention>_crop<n>`` (stand-ins also name their scorer); the catalog's
    metrics dataset adds the prefix ``eval.``."""
    label = row["label"] if not row["stand_in"] else f"{row['label']}_standin_{row['metric']}"
    return f"{row['dataset']}.{row['method']}.{label}.{row['convention']}_crop{int(row['crop_border'])}"


def mlflow_metrics(means: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Per-dataset means as ``{key: {"value": v, "step": 0}}`` (kedro-mlflow's metrics history format), keys
    through ``fluxir.runtime.tracking.mlflow_key`` (``MANIQA_standin_clipiqa+`` -> ``MANIQA_standin_clipiqaplus``)."""
    from fluxir.runtime.tracking import mlflow_metric_values

    values: dict[str, float] = {}
    for row in means.to_dict("records"):
        name = metric_name(row)
        if name in values:
            raise ValueError(f"two metric rows map to the MLflow key {name!r}")
        values[name] = row["mean"]
    return mlflow_metric_values(values)


def check_paper_table(paper: pd.DataFrame) -> pd.DataFrame:
    """Validate the paper's Table 1 as data (dataset, metric, higher_is_better, method, value)."""
    if missing := [c for c in PAPER_COLUMNS if c not in paper.columns]:
        raise ValueError(f"paper table lacks columns {missing}; expected {list(PAPER_COLUMNS)}")
    paper = paper[list(PAPER_COLUMNS)].copy()
    paper["value"] = pd.to_numeric(paper["value"], errors="raise")
    if unknown := sorted(set(paper["metric"]) - set(PAPER_METRICS)):
        raise ValueError(f"paper table has unknown metrics {unknown}; known: {list(PAPER_METRICS)}")
    return paper


def _order(values: Sequence[str], preferred: Sequence[str]) -> list[str]:
    seen = list(dict.fromkeys(values))
    return [v for v in preferred if v in seen] + [v for v in seen if v not in preferred]


def comparison_table(
    means: pd.DataFrame, paper: pd.DataFrame, datasets: Sequence[str] | None = None, tiny_models: bool = False
) -> pd.DataFrame:
    """Rows: dataset x metric (with its arrow, STAND-IN when the scorer is not the paper's, how it was computed
    and the image count); columns: this run's methods, then the paper's. A skipped dataset keeps the paper's row
    with NaN cells of ours."""
    paper = check_paper_table(paper)
    datasets = _order(list(datasets or []) + list(means["dataset"]) + list(paper["dataset"]), DATASET_ORDER)
    ours = _order(list(means["method"]), (OURS_METHOD, "flux_controlnet", "realesrgan", "bicubic"))
    paper_methods = _order(list(paper["method"]), (PAPER_OURS,))
    rows = []
    for dataset in datasets:
        mine = means[means["dataset"] == dataset]
        theirs = paper[paper["dataset"] == dataset]
        labels = _order(list(mine["label"]) + list(theirs["metric"]), tuple(PAPER_METRICS))
        for label in labels:
            mine_rows = mine[mine["label"] == label]
            theirs_rows = theirs[theirs["metric"] == label]
            if not mine_rows.empty:
                first = mine_rows.iloc[0]
                higher = bool(first["higher_is_better"])
                stand_in = bool(first["stand_in"])
                channels = {"y": "Y", "ycbcr": "Y (YCbCr)", "rgb": "RGB"}.get(first["convention"], first["convention"])
                crop = int(first["crop_border"])
                how = f"{first['metric']}, {channels}, {f'crop {crop}' if crop else 'whole image'}"
                n = int(mine_rows["n"].max())
            else:
                higher = bool(theirs_rows["higher_is_better"].iloc[0]) if not theirs_rows.empty else True
                stand_in, how, n = False, "not run", 0
            arrow = "↑" if higher else "↓"
            title = f"{label} STAND-IN ({mine_rows.iloc[0]['metric']} {arrow})" if stand_in else f"{label} {arrow}"
            row: dict[str, Any] = {"Dataset": dataset, "Metric": title, "Computed as": how, "n": n}
            for method in ours:
                cell = mine_rows[mine_rows["method"] == method]["mean"]
                row[method_title(method, tiny_models)] = float(cell.iloc[0]) if len(cell) else math.nan
            for method in paper_methods:
                cell = theirs_rows[theirs_rows["method"] == method]["value"]
                row[f"{method} {PAPER_SUFFIX}"] = float(cell.iloc[0]) if len(cell) else math.nan
            row["_higher"] = higher
            rows.append(row)
    return pd.DataFrame(rows)


def _fmt(value: Any) -> str:
    if not isinstance(value, float):
        return str(value)
    return "–" if math.isnan(value) else f"{value:.4f}"


BOLD, END_BOLD = "\x00", "\x01"  # around the best measured value of a row; each renderer writes its own markup


def _table_cells(table: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    header = [c for c in table.columns if not c.startswith("_")]
    run_columns = [c for c in table.columns if "(this run" in c or c.endswith("(your outputs)")]
    rows = []
    for _, row in table.iterrows():
        values = {c: row[c] for c in run_columns if not math.isnan(row[c])}
        best = (max if row["_higher"] else min)(values, key=values.get) if len(values) > 1 else None
        rows.append([f"{BOLD}{_fmt(row[c])}{END_BOLD}" if c == best else _fmt(row[c]) for c in header])
    return header, rows


def _stand_in_lines(means: pd.DataFrame, options: Mapping[str, str] | None = None) -> list[str]:
    subs = means[means["stand_in"]][["label", "metric"]].drop_duplicates()
    lines = []
    for r in subs.itertuples():
        if r.metric in PAPER_METRICS[r.label]:
            line = f"{r.label}: pyiqa `{r.metric}` WITHOUT its trained weights (random, seeded)"
        else:
            line = f"{r.label}: pyiqa `{r.metric}` in place of the paper's `{PAPER_METRICS[r.label][0]}`"
        extra = (options or {}).get(r.label)
        lines.append(f"{line}; options {extra}" if extra else line)
    return lines


def metric_settings(metrics: Mapping[str, Mapping[str, Any]]) -> tuple[str, dict[str, str]]:
    """The Setup line of ``evaluate.metrics`` (``MANIQA=maniqa-pipal (test_sample=1)``: every pyiqa option,
    since they change the numbers) and ``{label: options as text}`` for the stand-in notes."""
    from importlib.metadata import version

    specs = {label: MetricSpec.parse(spec) for group in metrics.values() for label, spec in (group or {}).items()}
    options = {label: ", ".join(f"{k}={v}" for k, v in s.options.items()) for label, s in specs.items() if s.options}
    names = f"pyiqa {version('pyiqa')}: " + "; ".join(
        f"{label}={s.name}"
        + (f" ({options[label]})" if label in options else "")
        + ("" if s.pretrained else " (random weights)")
        for label, s in specs.items()
    )
    return names, options


def conventions(config: EvaluateConfig, metric_names: str) -> dict[str, str]:
    """The scoring conventions behind every number, as rows of the report's setup table (docs/evaluation.md)."""
    return {
        "metrics": metric_names,
        "PSNR / SSIM channel": f"{config.convention}: {CONVENTION_DEFINITIONS[config.convention]}",
        "border crop": (
            f"{config.crop_border} px cut from each side of restored and HQ before PSNR, SSIM and LPIPS "
            "(LPIPS is cropped too, on RGB); no-reference metrics see the whole RGB output"
        ),
        "colour fix": (
            f"{config.color_fix} (evaluate.color_fix; the default follows SUPIR's and DreamClear's test "
            "scripts, the paper names none)"
        ),
    }


TABLE_NOTE = (
    "Columns marked (this run) are measured now, every method on the same images with the same metrics, "
    "channel convention and crop border; (your outputs) are images you supplied, scored the same way; columns "
    f"marked {PAPER_SUFFIX} are the paper's Table 1 numbers, computed by others with settings the paper does not "
    "give, so they compare only loosely. ↑ higher is better, ↓ lower is better; the best measured value is in "
    "bold. Computed as gives the scorer and the channel convention / crop border of every number in the row."
)


def report_blocks(
    table: pd.DataFrame,
    means: pd.DataFrame,
    status: Mapping[str, Mapping[str, Any]],
    run_info: Mapping[str, Any],
    grids: Mapping[str, tuple[str, bytes | None]],
    tiny: bool,
    options: Mapping[str, str] | None = None,
) -> list[tuple[Any, ...]]:
    """What the report says, in order, as blocks both renderers write: ``("notice", text)``, ``("list", title,
    note, lines)``, ``("heading", level, text)``, ``("text", text)``, ``("table", header, rows)``, ``("image",
    dataset, file name, PNG bytes)``. ``grids``: {dataset: (PNG file name, PNG bytes)}; ``options``: {metric
    label: its pyiqa options as text}."""
    benchmarks = [[str(k), str(v["status"]), str(v["images"]), str(v["message"])] for k, v in status.items()]
    blocks: list[tuple[Any, ...]] = [("heading", 1, "FluxIR evaluation report")]
    if tiny:
        blocks.append(("notice", TINY_NOTICE))
    if stand_ins := _stand_in_lines(means, options):
        blocks.append(("list", "Stand-in metrics", "their numbers are not comparable with the paper's", stand_ins))
    blocks += [
        ("heading", 2, "Setup"),
        ("table", ["setting", "value"], [(str(k), str(v)) for k, v in run_info.items()]),
        ("heading", 2, "Benchmarks"),
        ("table", ["benchmark", "status", "images", "message"], benchmarks),
        ("heading", 2, "Table 1: this run beside the paper"),
        ("text", TABLE_NOTE),
        ("table", *_table_cells(table)),
    ]
    if grids:
        blocks.append(("heading", 2, "Image grids (LQ / restored / HQ)"))
        for dataset, (file, png) in grids.items():
            blocks += [("heading", 3, dataset), ("image", dataset, file, png)]
    return blocks


def _md_cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ").replace(BOLD, "**").replace(END_BOLD, "**")


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(map(_md_cell, header)) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(map(_md_cell, row)) + " |" for row in rows])


# block kind -> its Markdown
_MARKDOWN: dict[str, Any] = {
    "heading": lambda level, text: f"{'#' * level} {text}",
    "notice": lambda text: f"> **{text}**",
    "list": lambda title, note, lines: f"**{title}** ({note}):\n\n" + "\n".join(f"- {line}" for line in lines),
    "text": lambda text: text,
    "table": _md_table,
    "image": lambda dataset, file, png: f"![{dataset}]({file})",
}


def render_markdown(blocks: Sequence[tuple[Any, ...]]) -> str:
    """The report of ``report_blocks`` as Markdown; grids are links to their PNG files in the same folder."""
    return "\n\n".join(_MARKDOWN[kind](*rest) for kind, *rest in blocks) + "\n"


def _html_cell(text: Any) -> str:
    return html.escape(str(text)).replace(BOLD, "<b>").replace(END_BOLD, "</b>")


def _html_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{_html_cell(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_html_cell(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _html_list(title: str, note: str, lines: Sequence[str]) -> str:
    items = "".join(f"<li>{html.escape(line)}</li>" for line in lines)
    return f"<p class='standin'><b>{html.escape(title)}</b> ({html.escape(note)}):</p><ul>{items}</ul>"


# block kind -> its HTML; grids are embedded as PNG data URIs
_HTML: dict[str, Any] = {
    "heading": lambda level, text: f"<h{level}>{html.escape(text)}</h{level}>",
    "notice": lambda text: f"<p class='notice'>{html.escape(text)}</p>",
    "list": _html_list,
    "text": lambda text: f"<p>{html.escape(text)}</p>",
    "table": _html_table,
    "image": lambda dataset, file, png: (
        f"<img alt='{html.escape(dataset)}' src='data:image/png;base64,{base64.b64encode(png).decode()}'>"
    ),
}

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:100%}
table{border-collapse:collapse;font-size:13px;margin-bottom:1.5em}
th,td{border:1px solid #bbb;padding:3px 6px;text-align:right}
th{background:#eee} td:nth-child(-n+3){text-align:left}
.notice{background:#fff3cd;border:2px solid #e0a800;padding:1em;font-weight:bold}
.standin{color:#a00} img{max-width:100%}
"""


def render_html(blocks: Sequence[tuple[Any, ...]]) -> str:
    """The report of ``report_blocks`` as one self-contained HTML page."""
    head = "<!DOCTYPE html><html><head><meta charset='utf-8'><title>FluxIR evaluation report</title>"
    body = "\n".join(_HTML[kind](*rest) for kind, *rest in blocks)
    return f"{head}\n<style>{_CSS}</style></head><body>\n{body}\n</body></html>"


def grid_figure(
    title: str,
    columns: Sequence[str],
    rows: Sequence[Mapping[str, np.ndarray | None]],
    row_titles: Sequence[str],
    message: str | None = None,
) -> Any:
    """A matplotlib figure: one row per image, one column per stage (e.g. LQ, Bicubic, FluxIR, HQ), cells at the
    restored size (LQ enlarged nearest-neighbour), a missing one blank; no rows: ``message`` (why it was skipped)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    if not rows:
        fig, ax = plt.subplots(figsize=(6, 1.5))
        ax.axis("off")
        ax.text(0.5, 0.5, f"{title}\n{message or 'no images'}", ha="center", va="center", wrap=True)
        return fig
    fig, axes = plt.subplots(len(rows), len(columns), figsize=(3 * len(columns), 3 * len(rows) + 0.6), squeeze=False)
    for r, (row, row_title) in enumerate(zip(rows, row_titles)):
        for c, column in enumerate(columns):
            ax = axes[r][c]
            ax.set(xticks=[], yticks=[])
            image = row.get(column)
            if image is None:
                ax.axis("off")
            else:
                ax.imshow(image, interpolation="nearest")
            if r == 0:
                ax.set_title(column, fontsize=10)
            if c == 0:
                ax.set_ylabel(row_title, fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def grids(
    manifest: pd.DataFrame, outputs: pd.DataFrame, status: Mapping[str, Mapping[str, Any]], config: EvaluateConfig
) -> dict[str, Any]:
    """Per benchmark key, a figure of its first ``evaluate.grid_images`` images: LQ | Bicubic | public restorers |
    baselines | FluxIR | HQ (when it has HQ), or saying why it was skipped; plus ``"png"``: {dataset: PNG bytes}."""
    note = "\ntiny random-weight models: this shows the machinery, not quality" if config.tiny_models else ""
    figures: dict[str, Any] = {}
    pngs: dict[str, bytes] = {}
    methods = ["bicubic", "realesrgan", "flux_controlnet", *[m for m in outputs["method"] if m != "fluxir"], "fluxir"]
    methods = list(dict.fromkeys(methods))
    for key, name in ((key, value["name"]) for key, value in config.benchmarks.items()):
        images = manifest[manifest["dataset"] == name].head(config.grid_images)
        if images.empty:
            message = (status.get(name) or {}).get("message", "not evaluated")
            figures[key] = grid_figure(name, [], [], [], message=message)
            continue
        has_hq = images["hq_path"].notna().any()
        present = [m for m in methods if not outputs[(outputs["dataset"] == name) & (outputs["method"] == m)].empty]
        columns = ["LQ", *[TITLES.get(m, m) for m in present]] + (["HQ"] if has_hq else [])
        rows = []
        for r in images.itertuples(index=False):
            cells: dict[str, np.ndarray | None] = {"LQ": read_image(r.lq_path)}
            for m in present:
                match = outputs[(outputs["dataset"] == name) & (outputs["method"] == m) & (outputs["image"] == r.image)]
                cells[TITLES.get(m, m)] = read_image(match["path"].iloc[0]) if len(match) else None
            if has_hq:
                cells["HQ"] = read_image(r.hq_path) if isinstance(r.hq_path, str) else None
            rows.append(cells)
        figures[key] = grid_figure(f"{name}: LQ / restored / HQ{note}", columns, rows, list(images["image"]))
        buffer = io.BytesIO()
        figures[key].savefig(buffer, format="png", dpi=100)
        pngs[name] = buffer.getvalue()
    return {**figures, "png": pngs}

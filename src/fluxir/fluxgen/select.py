"""FluxGen step 3: the IQA percentile cut (paper Sec. 3.1) and its figure for 08_reporting and MLflow."""

from __future__ import annotations

from typing import Any

import pandas as pd

from fluxir.iqa import lower_is_better


def histograms_with_cuts(table: pd.DataFrame, cuts: dict[str, tuple[float, bool]], percentile: float) -> Any:
    """One histogram per IQA metric with the selection cut drawn and the kept side shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(cuts), figsize=(4.5 * len(cuts), 3.4), squeeze=False)
    for ax, (name, (cut, lower)) in zip(axes[0], cuts.items()):
        values = table[name].to_numpy()
        ax.hist(values, bins=min(50, max(5, len(values) // 4)), color="#4c72b0", alpha=0.85)
        ax.axvline(cut, color="#c44e52", lw=2, label=f"cut {cut:.4g}")
        lo, hi = ax.get_xlim()
        ax.axvspan(cut, hi, color="#55a868", alpha=0.12) if not lower else ax.axvspan(
            lo, cut, color="#55a868", alpha=0.12
        )
        kept = (values <= cut) if lower else (values >= cut)
        ax.set_title(f"{name} ({'lower' if lower else 'higher'} is better)\nkept {kept.sum()}/{len(values)}")
        ax.set_xlabel("score")
        ax.legend(loc="upper left", fontsize=8)
    axes[0][0].set_ylabel("images")
    fig.suptitle(f"IQA selection: {percentile:g}th percentile cut per metric", fontsize=10)
    fig.tight_layout()
    return fig


def check_percentile(percentile: Any) -> None:
    """``select.percentile`` must be a number in (0, 100): the share cut from the bottom of every metric."""
    if isinstance(percentile, bool) or not isinstance(percentile, (int, float)) or not 0 < percentile < 100:
        raise ValueError(f"select.percentile must be in (0, 100) exclusive, got {percentile!r} (the paper uses 5)")


def percentile_cuts(
    scores: pd.DataFrame, names: list[str], percentile: float
) -> tuple[pd.DataFrame, dict[str, tuple[float, bool]]]:
    """Keep images inside the top ``100 - percentile`` % on every metric (paper: top 95% => percentile 5).

    For a metric where lower is better the cut is the ``100 - percentile`` th percentile and values at or
    below it pass. Returns (scores plus ``<metric>_threshold``, ``<metric>_pass`` and ``keep``,
    ``{metric: (cut, lower_is_better)}``).
    """
    check_percentile(percentile)
    table = scores.copy()
    keep = pd.Series(True, index=table.index)
    cuts: dict[str, tuple[float, bool]] = {}
    for name in names:
        lower = lower_is_better(name)
        cut = float(table[name].quantile((100 - percentile) / 100 if lower else percentile / 100))
        passed = table[name] <= cut if lower else table[name] >= cut
        table[f"{name}_threshold"] = cut
        table[f"{name}_pass"] = passed
        keep &= passed
        cuts[name] = (cut, lower)
    table["keep"] = keep
    return table, cuts


def apply_content_filter(table: pd.DataFrame, nsfw: pd.DataFrame, names: list[str]) -> pd.DataFrame:
    """``table`` (``percentile_cuts``'s) joined with the content filter's rows by image_id: flagged images lose
    ``keep``, and ``drop_reason`` says why each dropped image is out (the filter's score and threshold, or the
    IQA metrics it fell below the cut on)."""
    columns = ["image_id", "nsfw_score", "nsfw_flagged", "nsfw_threshold", "content_filter"]
    out = table.merge(nsfw[columns], on="image_id", how="left", validate="one_to_one")
    if out["nsfw_flagged"].isna().any():
        missing = out.loc[out["nsfw_flagged"].isna(), "image_id"].tolist()
        raise RuntimeError(
            f"images {missing[:5]} have IQA scores but no content filter row: rerun the fluxgen pipeline "
            "(both stages read the same generated_images)"
        )
    flagged = out["nsfw_flagged"].astype(bool)
    out["nsfw_flagged"] = flagged
    iqa_reason = [
        "" if row_keep else "iqa: below the cut on " + ", ".join(n for n in names if not out.at[i, f"{n}_pass"])
        for i, row_keep in out["keep"].items()
    ]
    filter_reason = [
        f"content filter: nsfw score {score:.4f} > {threshold:g}" if is_flagged else ""
        for score, threshold, is_flagged in zip(out["nsfw_score"], out["nsfw_threshold"], flagged)
    ]
    out["drop_reason"] = ["; ".join(r for r in pair if r) for pair in zip(filter_reason, iqa_reason)]
    out["keep"] = out["keep"] & ~flagged
    return out

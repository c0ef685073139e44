"""Draw docs/img/architecture.svg (pipelines, modules, layers and the FluxIR adapter).

Run: python docs/img/architecture.py
"""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path
from xml.sax.saxutils import escape

W, H = 1280, 940
LAYER_FILL = {
    "raw": "#eeeeee",
    "intermediate": "#dbe9f6",
    "primary": "#fff2cc",
    "feature": "#e3f1d4",
    "model_input": "#fde2c8",
    "models": "#f8d0d4",
    "model_output": "#f3e0f7",
    "reporting": "#e2ddf7",
}
out: list[str] = []


def text(x, y, s, size=12, anchor="middle", weight="normal", fill="#222", italic=False):
    style = ' font-style="italic"' if italic else ""
    out.append(
        f'<text x="{x}" y="{y}" font-size="{size}" text-anchor="{anchor}" font-weight="{weight}" '
        f'fill="{fill}"{style}>{escape(s)}</text>'
    )


def box(x, y, w, h, lines, fill="#ffffff", stroke="#333", rx=4, size=12, bold_first=True, dash=False):
    d = ' stroke-dasharray="5,3"' if dash else ""
    out.append(
        f'<rect x="{x}" y="{y}" width="{w}" height="{h}" rx="{rx}" fill="{fill}" stroke="{stroke}" '
        f'stroke-width="1.3"{d}/>'
    )
    top = y + h / 2 - (len(lines) - 1) * (size + 3) / 2 + size / 3
    for i, line in enumerate(lines):
        text(
            x + w / 2,
            top + i * (size + 3),
            line,
            size=size if i == 0 else size - 1.5,
            weight="bold" if (i == 0 and bold_first) else "normal",
        )


def data(x, y, w, name, layer, h=24):
    box(x, y, w, h, [name], fill=LAYER_FILL[layer], stroke="#777", rx=h / 2, size=11, bold_first=False)


def arrow(x1, y1, x2, y2, label=None, dash=False, color="#444"):
    d = ' stroke-dasharray="5,3"' if dash else ""
    out.append(
        f'<line x1="{x1}" y1="{y1}" x2="{x2}" y2="{y2}" stroke="{color}" stroke-width="1.4" '
        f'marker-end="url(#head)"{d}/>'
    )
    if label:
        text((x1 + x2) / 2, (y1 + y2) / 2 - 6, label, size=10, fill="#555", italic=True)


def path(d, dash=False, color="#444"):
    s = ' stroke-dasharray="5,3"' if dash else ""
    out.append(f'<path d="{d}" fill="none" stroke="{color}" stroke-width="1.4" marker-end="url(#head)"{s}/>')


def lane(y, h, title, subtitle):
    out.append(f'<rect x="12" y="{y}" width="826" height="{h}" rx="8" fill="#fafafa" stroke="#bbb"/>')
    text(24, y + 18, title, size=14, anchor="start", weight="bold")
    text(24, y + 34, subtitle, size=10.5, anchor="start", fill="#555")


out.append(
    '<defs><marker id="head" markerWidth="9" markerHeight="7" refX="8" refY="3.5" orient="auto">'
    '<polygon points="0 0, 9 3.5, 0 7" fill="#444"/></marker></defs>'
)
out.append(f'<rect width="{W}" height="{H}" fill="#ffffff"/>')
text(
    W / 2,
    28,
    "fluxir: FluxGen builds the training set, FluxIR adapts a frozen Flux to restoration",
    size=17,
    weight="bold",
)
text(
    W / 2,
    48,
    "Each lane is a Kedro modular pipeline (namespace = its name); boxes are nodes with the module "
    "under src/fluxir/ that does the work; pills are catalog datasets coloured by kedro-viz layer",
    size=11.5,
    fill="#444",
)

# ---- fluxgen lane ---------------------------------------------------------------------------------
lane(
    64,
    190,
    "fluxgen",
    "paper Sec. 3.1: generate -> content_filter (NSFW, dropped at selection) and score -> select -> degrade",
)
box(24, 110, 134, 58, ["Flux.1-dev", "frozen, empty prompt", "seed = base_seed + i"], fill="#eeeeee", dash=True)
X = (178, 346, 514, 682)
box(X[0], 112, 146, 54, ["generate_images", "accelerate: N GPUs", "fluxgen/generate.py"])
box(X[1], 112, 146, 54, ["score_images", "CLIPIQA+ MANIQA MUSIQ", "iqa/"])
box(X[2], 112, 146, 54, ["select_by_iqa", "top 95% on every metric", "fluxgen/score.py"])
box(X[3], 112, 146, 54, ["degrade_pairs", "Real-ESRGAN x4 (SeeSR)", "fluxgen/degrade.py"])
arrow(158, 139, X[0] - 2, 139)
for a, b in pairwise(X):
    arrow(a + 146, 139, b - 2, 139)
data(X[0] + 6, 190, 134, "generated_images", "intermediate")
data(X[0] + 6, 220, 134, "nsfw_scores", "feature")
data(X[1] + 6, 190, 134, "iqa_scores", "feature")
data(X[2] + 6, 190, 134, "iqa_selection", "feature")
data(X[2] + 6, 220, 134, "iqa_histograms", "reporting")
data(X[3] + 6, 190, 134, "pairs_manifest", "model_input")
data(X[3] + 6, 220, 134, "pair_store (HQ/LQ)", "model_input")
data(24, 190, 134, "fluxgen_image_store", "intermediate")
for x in X:
    out.append(f'<line x1="{x + 73}" y1="166" x2="{x + 73}" y2="188" stroke="#999" stroke-width="1"/>')

# ---- train lane -----------------------------------------------------------------------------------
lane(268, 130, "train", "paper Sec. 3.3: rectified flow + pixel loss; Flux and VAE frozen, adapter trained")
box(90, 312, 170, 54, ["precompute_latents", "VAE latents once", "training/latents.py"])
box(300, 312, 170, 54, ["train_adapter", "accelerate launch, bf16", "training/loop.py"])
box(560, 312, 130, 54, ["plot_loss_curves"])
path("M 755 244 L 755 262 L 175 262 L 175 310")
text(600, 258, "pairs_manifest", size=10, fill="#555", italic=True)
arrow(260, 339, 298, 339)
data(90, 370, 170, "train_latent_cache", "model_input")
arrow(470, 339, 558, 339, "train_history")
data(300, 370, 170, "fluxir_adapter", "models")
data(560, 370, 130, "train_loss_curves", "reporting")

# ---- evaluate lane --------------------------------------------------------------------------------
lane(412, 190, "evaluate", "paper Sec. 4.1, Table 1: benchmarks, baselines run here, metrics")
box(24, 462, 150, 70, ["prepare_<benchmark>", "DIV2K-Val RealSR", "DrealSR RealLQ250", "evaluation/testsets.py"])
box(196, 470, 136, 54, ["collect_benchmarks"])
box(
    342,
    452,
    168,
    90,
    [
        "restore_benchmarks",
        "restore_with_public_weights",
        "upsample_bicubic",
        "find_baselines",
        "evaluation/restore.py",
    ],
    bold_first=False,
)
box(522, 470, 140, 54, ["score_outputs", "PSNR SSIM LPIPS + NR", "evaluation/scores.py"])
box(682, 470, 146, 54, ["build_report", "Table-1 style", "evaluation/report.py"])
arrow(174, 497, 194, 497)
arrow(332, 497, 340, 497)
arrow(510, 497, 520, 497)
arrow(662, 497, 680, 497)
data(196, 548, 136, "benchmark_manifest", "primary")
data(352, 548, 150, "eval_restored_images", "model_output")
data(522, 548, 140, "evaluation_means", "reporting")
data(682, 548, 146, "evaluation_report", "reporting")
data(682, 576, 146, "<benchmark>_grid", "reporting")
data(24, 548, 150, "paper_table1", "raw")
path("M 385 394 L 385 420 L 427 420 L 427 456")

# ---- restore lane ---------------------------------------------------------------------------------
lane(616, 110, "restore", "your photos: restore.input_dir -> restore.output_dir (tiled, resumable)")
box(196, 656, 138, 58, ["plan_restore", "skip finished files", "restoration/files.py"])
box(362, 656, 150, 58, ["restore_images", "Flux + adapter, tiles", "restoration/files.py"])
arrow(330, 685, 360, 685)
box(28, 662, 140, 46, ["restore.input_dir", "LQ photos"], fill="#eeeeee", dash=True, bold_first=False)
arrow(168, 685, 198, 685)
data(544, 660, 130, "restore_summary", "reporting")
data(544, 688, 130, "restore_failures", "reporting")
arrow(512, 685, 542, 675)
path("M 385 405 L 845 405 L 845 609 L 437 609 L 437 658", dash=True)
text(600, 604, "fluxir_adapter", size=10, fill="#555", italic=True)
text(762, 640, "sharing (run when named)", size=10, fill="#555", italic=True)
box(690, 646, 144, 72, ["export", "pairs: parquet / tar", "export_adapter", "adapter + LICENSE"])

# ---- shared base ----------------------------------------------------------------------------------
lane(736, 90, "shared base", "src/fluxir/: used by every stage")
for i, (left, right) in enumerate(
    (
        (
            "parameters/: one Config base, checks, validation",
            "io/: atomic writes, provenance, image readers, image store",
        ),
        (
            "models/: loading, packing, prompts;  compat.py",
            "runtime/: launch, MLflow tracking, progress, hooks",
        ),
        ("settings.py, pipeline_registry.py, cli.py: Kedro glue", "datasets/: catalog types (image store, adapter)"),
    )
):
    text(190, 760 + i * 18, left, size=10.5, anchor="start", fill="#333")
    text(510, 760 + i * 18, right, size=10.5, anchor="start", fill="#333")

# ---- legend ---------------------------------------------------------------------------------------
text(24, 844, "kedro-viz layers:", size=11.5, anchor="start", weight="bold")
x = 140
for layer, fill in LAYER_FILL.items():
    w = 9 + 6.6 * len(layer)
    box(x, 832, w, 20, [layer], fill=fill, stroke="#777", rx=10, size=10.5, bold_first=False)
    x += w + 8
text(
    24,
    879,
    "MLflow: one experiment per pipeline (fluxir-fluxgen, fluxir-train, fluxir-evaluate, fluxir-restore);",
    size=11,
    anchor="start",
    fill="#333",
)
text(
    24,
    896,
    "every reporting dataset is logged as an artifact, the adapter with its config.json (fluxir.runtime.hooks).",
    size=11,
    anchor="start",
    fill="#333",
)
text(
    24,
    924,
    "Heavy libraries (torch, diffusers, pyiqa) are imported inside the nodes: kedro viz and the catalog "
    "start without them.",
    size=11,
    anchor="start",
    fill="#333",
)

# ---- adapter panel --------------------------------------------------------------------------------
out.append('<rect x="852" y="64" width="416" height="864" rx="8" fill="#fff8f8" stroke="#c99"/>')
text(1060, 86, "FluxIR adapter (paper Sec. 3.2, Fig. 3)", size=14, weight="bold")
text(1060, 102, "trainable ~0.41B (387M + 22.8M SE at r = 32); Flux 11.9B frozen", size=10.5, fill="#555")
box(868, 118, 124, 50, ["LQ image", "bicubic x4 -> VAE enc"], fill="#eeeeee", bold_first=False, size=11)
box(1000, 118, 124, 50, ["noisy latent z_t", "t from 1 to 0"], fill="#eeeeee", bold_first=False, size=11)
box(1132, 118, 124, 50, ["empty-prompt", "T5 p, CLIP y"], fill="#eeeeee", bold_first=False, size=11)
box(
    868,
    196,
    256,
    54,
    ["M_i: zero-init Linear(64 -> 3072)", "z_c = x_embed(z_t) + M_i(z_lq)", "models/adapter.py"],
    fill=LAYER_FILL["models"],
    size=11,
)
box(1132, 196, 124, 54, ["theta_p, theta_y", "p + theta_p", "y + theta_y"], fill=LAYER_FILL["models"], size=11)
arrow(930, 168, 930, 194)
arrow(1062, 168, 1062, 194)
arrow(1194, 168, 1194, 194)
box(
    868,
    282,
    388,
    54,
    [
        "D: one MM-DiT double block",
        "initialised from Flux block 0 -> features (f_z, f_p)",
        "models/adapter.py (FluxIRAdapter)",
    ],
    fill=LAYER_FILL["models"],
    size=11,
)
arrow(996, 250, 996, 280)
arrow(1194, 250, 1194, 280)
box(
    868,
    368,
    388,
    66,
    [
        "114 squeeze-excitation layers (SE_z, SE_p per block)",
        "SE(x) = W_e (W_s x + B_s) + B_e, rank r = 32",
        "W_e, B_e zero-init: a new adapter leaves Flux unchanged",
    ],
    fill=LAYER_FILL["models"],
    size=11,
)
arrow(1062, 336, 1062, 366)
box(
    868,
    470,
    388,
    92,
    [
        "Flux.1-dev transformer (frozen)",
        "19 double-stream + 38 single-stream blocks",
        "control z_c^i, p_c^i added BEFORE block i",
        "(image and text streams) -> velocity v",
        "models/controlled_flux.py",
    ],
    fill="#eeeeee",
    size=11,
)
for x in range(890, 1250, 30):
    out.append(f'<line x1="{x}" y1="434" x2="{x}" y2="468" stroke="#b55" stroke-width="1" marker-end="url(#head)"/>')
box(
    868,
    594,
    388,
    50,
    ["Euler sampler, 20 steps (guidance 4)", "z <- z + (t_next - t) v", "restoration/sampler.py"],
    size=11,
)
arrow(1062, 562, 1062, 592)
box(
    868,
    676,
    388,
    50,
    [
        "VAE decode (tiled) -> colour fix",
        "wavelet | adain | none against the upsampled LQ",
        "restoration/sampler.py",
    ],
    size=11,
)
arrow(1062, 644, 1062, 674)
box(
    868,
    758,
    388,
    50,
    ["restored image, 4x the LQ size", "large images: overlapping tiles, cosine-blended"],
    fill=LAYER_FILL["model_output"],
    size=11,
)
arrow(1062, 726, 1062, 756)
text(1060, 838, "training/loss.py: loss = ||v_p - (z_1 - z_0)||^2 + alpha * pixel loss", size=10.5, fill="#555")
text(1060, 854, "(Eq. 7-10); t ~ clamp(U(-eps, 1 + eps), 0, 1), eps = 0.05 (Eq. 5-6)", size=10.5, fill="#555")

SVG = (
    f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
    f'font-family="DejaVu Sans, Helvetica, Arial, sans-serif">\n' + "\n".join(out) + "\n</svg>\n"
)

if __name__ == "__main__":
    Path(__file__).with_name("architecture.svg").write_text(SVG)

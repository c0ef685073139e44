"""PNG provenance (fluxir.io.provenance), the tiny content filter classifier, and what fetch and the preflight
check know about the classifier."""

from __future__ import annotations

import json

import numpy as np

from fluxir.io.atomic import write_png_atomic
from fluxir.io.images import read_image
from fluxir.io.provenance import GENERATED_SOFTWARE, generated_fields, model_revision, png_text, read_provenance
from fluxir.parameters.config import load_params

from conftest import REPO

TINY_CLASSIFIER = REPO / "data" / "01_raw" / "tiny" / "nsfw_classifier"


def test_text_chunks_round_trip_and_leave_the_pixels_alone(tmp_path):
    image = np.random.default_rng(0).integers(0, 256, (8, 12, 3), dtype=np.uint8)
    fields = generated_fields("owner/model", "a" * 40, 7, "c0ffee", Prompt="ein Bild: ünïcode")
    write_png_atomic(tmp_path / "a.png", image, png_text(fields))
    write_png_atomic(tmp_path / "b.png", image, png_text(fields))
    assert read_provenance(tmp_path / "a.png") == {k: str(v) for k, v in fields.items()}
    assert read_provenance(tmp_path / "a.png")["Software"] == GENERATED_SOFTWARE
    assert np.array_equal(read_image(tmp_path / "a.png"), image)
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes(), "no timestamp: same bytes"


def test_revision_is_the_snapshot_commit_or_a_folder_hash(tmp_path):
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = tmp_path / "models--o--m" / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    assert model_revision(snapshot) == commit
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"a": 1}))
    first = model_revision(folder)
    (folder / "config.json").write_text(json.dumps({"a": 2}))
    assert first.startswith("local-") and model_revision(folder) != first
    assert model_revision("nobody/not-cached-here") == "unknown"


def test_tiny_classifier_is_in_falconsai_format_and_flags_red_only():
    from fluxir.fluxgen.content_filter import load_classifier, nsfw_probabilities

    config = json.loads((TINY_CLASSIFIER / "config.json").read_text())
    assert config["id2label"] == {"0": "normal", "1": "nsfw"}
    assert {p.name for p in TINY_CLASSIFIER.iterdir()} == {
        "config.json",
        "preprocessor_config.json",
        "model.safetensors",
    }
    assert sum(p.stat().st_size for p in TINY_CLASSIFIER.iterdir()) < 100_000
    processor, classifier, nsfw = load_classifier(str(TINY_CLASSIFIER), "cpu", "float32")
    red = np.zeros((48, 64, 3), np.uint8)
    red[..., 0] = 230
    others = [np.full((48, 64, 3), v, np.uint8) for v in (0, 128, 255)]
    noise = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    scores = nsfw_probabilities(processor, classifier, nsfw, [red, *others, noise])
    assert scores[0] > 0.85 > scores[1:].max()


def test_fetch_lists_the_classifier_and_preflight_checks_it(tmp_path):
    from fluxir.fetch import manifest
    from fluxir.preflight.models import check_content_filter

    base = manifest.build(load_params("base", [], REPO), REPO, ("filter",))
    [item] = base.items
    assert (item.repo, item.dest, item.used_by) == (manifest.FILTER_REPO, None, ("fluxgen.content_filter.model",))
    assert set(item.allow_patterns) == {"config.json", "preprocessor_config.json", "model.safetensors"}
    folder = tmp_path / "classifier"
    folder.mkdir()
    into_folder = manifest.build(
        load_params("base", [f"fluxgen.content_filter.model={folder}"], REPO), REPO, ("filter",)
    )
    assert [i.dest for i in into_folder.items] == [folder.resolve()]
    off = manifest.build(load_params("base", ["fluxgen.content_filter.enabled=false"], REPO), REPO, ("filter",))
    assert off.items == [] and "enabled is false" in off.unconfigured[0]

    [ok] = check_content_filter(load_params("tiny", [], REPO), REPO)
    assert ok.status == "OK"
    [missing] = check_content_filter(load_params("base", [f"fluxgen.content_filter.model={folder}"], REPO), REPO)
    assert (
        missing.status == "FAIL"
        and "model.safetensors" in missing.detail
        and "fluxir.fetch --only filter" in (missing.detail)
    )
    [disabled] = check_content_filter(load_params("tiny", ["fluxgen.content_filter.enabled=false"], REPO), REPO)
    assert disabled.status == "WARN" and "2(e)(i)(B)" in disabled.detail

"""FluxGen wiring: generate -> content filter and IQA scores -> select -> degrade."""

from kedro.pipeline import Node, Pipeline

from .nodes import content_filter, degrade_pairs, generate_images, score_images, select_by_iqa


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                generate_images,
                ["fluxgen_image_store", "prompt_embeddings", "params:fluxgen"],
                "generated_images",
                name="generate_images",
            ),
            Node(
                score_images,
                ["generated_images", "iqa_parts", "params:iqa", "params:fluxgen.num_processes"],
                "iqa_scores",
                name="score_images",
            ),
            Node(
                content_filter,
                ["generated_images", "nsfw_parts", "params:fluxgen.content_filter", "params:fluxgen.num_processes"],
                "nsfw_scores",
                name="content_filter",
            ),
            Node(
                select_by_iqa,
                ["iqa_scores", "params:iqa.metrics", "params:select.percentile", "nsfw_scores"],
                ["iqa_selection", "select_metrics", "iqa_histograms"],
                name="select_by_iqa",
            ),
            Node(
                degrade_pairs, ["iqa_selection", "pair_store", "params:degrade"], "pairs_manifest", name="degrade_pairs"
            ),
        ]
    )

"""Restore wiring: plan (check folders, skip finished) -> restore (``restore.method``)."""

from kedro.pipeline import Node, Pipeline

from .nodes import plan_restore, restore_images


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                plan_restore,
                ["restore_input", "restore_output", "params:restore.overwrite"],
                "restore_plan",
                name="plan_restore",
            ),
            Node(
                restore_images,
                [
                    "restore_plan",
                    "fluxir_adapter",
                    "prompt_embeddings",
                    "restore_input",
                    "restore_output",
                    "params:restore",
                    "params:baselines",
                ],
                ["restore_failures", "restore_summary"],
                name="restore_images",
            ),
        ]
    )

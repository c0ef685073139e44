"""Training wiring: pairs_manifest -> precompute_latents -> train_adapter -> fluxir_adapter (+ history, loss curves)."""

from kedro.pipeline import Node, Pipeline

from .nodes import plot_loss_curves, precompute_latents, train_adapter


def create_pipeline(**kwargs) -> Pipeline:
    train_inputs = ["pairs_manifest", "latent_cache_summary", "prompt_embeddings", "train_checkpoints"]
    train_inputs += ["train_latent_cache", "params:train"]
    return Pipeline(
        [
            Node(
                precompute_latents,
                ["pairs_manifest", "train_latent_cache", "params:train"],
                "latent_cache_summary",
                name="precompute_latents",
            ),
            Node(train_adapter, train_inputs, ["fluxir_adapter", "train_history"], name="train_adapter"),
            Node(plot_loss_curves, "train_history", "train_loss_curves", name="plot_loss_curves"),
        ]
    )

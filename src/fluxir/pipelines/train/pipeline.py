"""Training wiring: pairs_manifest -> train_adapter -> fluxir_adapter (+ history, loss curves)."""

from kedro.pipeline import Node, Pipeline

from .nodes import plot_loss_curves, train_adapter


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(train_adapter, ["pairs_manifest", "params:train"], ["fluxir_adapter", "train_history"],
                 name="train_adapter"),
            Node(plot_loss_curves, "train_history", "train_loss_curves", name="plot_loss_curves"),
        ]
    )

"""Export nodes: the library's own functions (``fluxir.export.build``) write the shards and card, then upload."""

from fluxir.export.build import export_dataset, push_dataset

__all__ = ["export_dataset", "push_dataset"]

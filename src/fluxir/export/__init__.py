"""Sharing what FluxGen and FluxIR make: the dataset as Hugging Face parquet / WebDataset shards with a dataset
card (:mod:`fluxir.export.dataset`, :mod:`fluxir.export.cards`), the generator's licence terms
(:mod:`fluxir.export.licenses`) and the upload to a hub (:mod:`fluxir.export.hub`).
"""

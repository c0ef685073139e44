"""Sharing what FluxGen and FluxIR make: dataset shards and cards, the generator's licence terms, the upload."""

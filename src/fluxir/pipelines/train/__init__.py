"""FluxIR training: adapter on FluxGen's pairs (paper Sec. 3.3)."""

from .pipeline import create_pipeline as create_pipeline

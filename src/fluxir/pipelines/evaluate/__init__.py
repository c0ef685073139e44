"""Evaluate: benchmarks (paper Sec. 4.1) -> FluxIR + bicubic + baselines -> pyiqa metrics -> Table-1-style report."""

from .pipeline import create_pipeline as create_pipeline

"""FluxGen: generate -> score -> select -> degrade (paper Sec. 3.1)."""

from .pipeline import create_pipeline as create_pipeline

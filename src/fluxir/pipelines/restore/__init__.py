"""Restore: ``kedro run --pipeline=restore`` restores a folder of photos with Flux + the trained FluxIR adapter."""

from .pipeline import create_pipeline as create_pipeline

"""Restoration with Flux + the FluxIR adapter: the sampler, colour fix, files."""

"""fluxir: FluxGen (a generated training set) and FluxIR (a light adapter on frozen Flux) for image restoration."""

from fluxir.runtime.progress import filter_third_party_notices

__version__ = "0.1.0"

filter_third_party_notices()  # before torch, torchao, bitsandbytes or Kedro's config loader print them

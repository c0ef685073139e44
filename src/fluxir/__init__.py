"""fluxir: FluxGen (a generated training set) and FluxIR (a light adapter on frozen Flux) for image restoration."""

import atexit
import gc

from fluxir.runtime.progress import filter_third_party_notices

__version__ = "0.1.0"

filter_third_party_notices()  # before torch, torchao, bitsandbytes or Kedro's config loader print them
# The interpreter's last garbage collections at exit walk every object torch, diffusers and transformers made: 2-3 s
# per process on a CPU core (measured), paid by every rank and `kedro run`. Frozen objects are skipped; exit handlers
# and the closing of modules run as before.
atexit.register(gc.freeze)

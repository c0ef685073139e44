"""Files: atomic, durable writes (``atomic``), image readers (``images``), hashes and PNG provenance
(``provenance``), the sharded image store and writer locks (``store``). The catalog's datasets import these at
``kedro viz`` start-up, so torch is imported only inside ``provenance.hash_tensors``."""

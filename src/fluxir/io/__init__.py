"""Files: atomic writes, locks, hashing, image readers and the sharded image store.

Every write goes to a temporary file (or folder) next to its target, is flushed to the disk (``fsync``) and
renamed into place, so a file that exists is complete, after a kill and after a power loss alike: a
stopped run loses at most what was in flight and a rerun skips the rest.

- ``fluxir.io.atomic``: atomic, durable file and folder writes, and folder manifests (a folder that proves itself).
- ``fluxir.io.locks``: one writer per stage output (``exclusive_lock``).
- ``fluxir.io.hashing``: SHA-256 of files, tensors and JSON values.
- ``fluxir.io.images``: the two image readers.
- ``fluxir.io.store``: the sharded ``ImageStore``, its recorded writes and the ``WriterPool``.

These modules are imported by the catalog's datasets (``kedro viz`` start-up): torch is imported only
inside ``hashing.hash_tensors``.
"""

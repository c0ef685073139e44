"""Fetch every weight file and benchmark a full run needs: ``python -m fluxir.fetch [--only ...] [--list|--dry-run]``.

:mod:`fluxir.fetch.manifest` says what, from where and where to; :mod:`fluxir.fetch.steps` plans, checks the disk
and fetches on this machine; ``__main__`` is the command.
"""

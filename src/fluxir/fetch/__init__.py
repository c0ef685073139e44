"""Fetch every weight file and benchmark a full run needs: ``python -m fluxir.fetch [--only ...] [--list|--dry-run]``.

``manifest`` says what, from where and where to; ``steps`` plans, checks the disk and fetches on this machine.
"""

"""Network guard for test subprocesses: loaded at interpreter start when this folder is on PYTHONPATH.

Any ``socket.connect`` or ``getaddrinfo`` to a non-loopback address raises ``ConnectionRefusedError``
and is appended to the file named by ``FLUXIR_NETGUARD_LOG``, so a caller that swallows the error
still fails the test (tests/conftest.py ``no_network`` reads the log).
"""

import os

if os.environ.get("FLUXIR_NETGUARD_LOG"):
    import sys

    sys.path.insert(0, os.path.dirname(__file__))
    import netguard

    netguard.install(os.environ["FLUXIR_NETGUARD_LOG"])

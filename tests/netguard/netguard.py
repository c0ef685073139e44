"""Block and record every non-loopback connection attempt of this process (see sitecustomize.py)."""

from __future__ import annotations

import ipaddress
import os
import socket
import traceback

_LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}


def _is_local(host: object) -> bool:
    if host is None or host in ("", b""):
        return True  # getaddrinfo(None, port): a local bind
    name = host.decode() if isinstance(host, bytes) else str(host)
    if name in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name.split("%")[0]).is_loopback
    except ValueError:
        return False  # a host name: resolving it is already network use


def install(log_path: str | os.PathLike) -> None:
    """Patch socket.connect/connect_ex/getaddrinfo of this process to refuse non-loopback hosts."""

    def refuse(what: str, address: object) -> None:
        with open(log_path, "a") as log:
            log.write(f"pid {os.getpid()} {what} {address!r}\n{''.join(traceback.format_stack(limit=12))}\n")
        raise ConnectionRefusedError(f"network access blocked in tests: {what} {address!r}")

    real_connect, real_connect_ex, real_getaddrinfo = (
        socket.socket.connect,
        socket.socket.connect_ex,
        socket.getaddrinfo,
    )

    def connect(self: socket.socket, address: object) -> None:
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_local(address[0]):
            refuse("connect", address)
        return real_connect(self, address)

    def connect_ex(self: socket.socket, address: object) -> int:
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_local(address[0]):
            refuse("connect_ex", address)
        return real_connect_ex(self, address)

    def getaddrinfo(host: object, *args: object, **kwargs: object) -> list:
        if not _is_local(host):
            refuse("getaddrinfo", host)
        return real_getaddrinfo(host, *args, **kwargs)

    socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo = connect, connect_ex, getaddrinfo
    socket._fluxir_netguard_restore = lambda: _restore(real_connect, real_connect_ex, real_getaddrinfo)


def _restore(connect: object, connect_ex: object, getaddrinfo: object) -> None:
    socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo = connect, connect_ex, getaddrinfo

"""The tests' network guard: nothing the tests run may reach beyond this machine.

Imported by ``tests/conftest.py`` for the test process and, as ``sitecustomize`` (this folder is
put first on ``PYTHONPATH``), by every Python subprocess the tests start. Connections to loopback
addresses and Unix sockets stay allowed (the distributed-training test and the real-ComfyUI
check talk over 127.0.0.1); any other connection, and any name lookup other than this machine's
own names, raises :class:`NetworkBlocked`. Each attempt is also appended to the file named by
``EMOTIVETALK_NETWORK_LOG``, so an attempt that some library catches and hides still fails the
test session (conftest reads the file at the end).
"""

from __future__ import annotations

import ipaddress
import os
import socket
import traceback

LOG_VARIABLE = "EMOTIVETALK_NETWORK_LOG"


class NetworkBlocked(RuntimeError):
    """Not an OSError on purpose: libraries catch OSError and quietly fall back to "offline"."""


def _local_name(host) -> bool:
    if host is None:
        return True
    host = host.decode() if isinstance(host, bytes) else str(host)
    if host in ("localhost", "", socket.gethostname()):
        return True
    try:
        address = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return False  # a name: looking it up would ask a DNS server
    return address.is_loopback or address.is_unspecified


def _numeric(host) -> bool:
    try:
        ipaddress.ip_address(str(host).split("%")[0])
        return True
    except ValueError:
        return False


def _refuse(what: str) -> None:
    log = os.environ.get(LOG_VARIABLE)
    if log:
        with open(log, "a", encoding="utf-8") as file:
            file.write(f"{what} (pid {os.getpid()})\n{''.join(traceback.format_stack(limit=12))}\n")
    raise NetworkBlocked(f"the tests run offline: {what} was blocked")


def install() -> None:
    if getattr(socket.socket, "_emotivetalk_guarded", False):
        return
    connect, connect_ex, getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo

    def check(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not _local_name(address[0]):
            _refuse(f"a connection to {address!r}")

    def guarded_connect(self, address):
        check(self, address)
        return connect(self, address)

    def guarded_connect_ex(self, address):
        check(self, address)
        return connect_ex(self, address)

    def guarded_getaddrinfo(host, *args, **kwargs):
        if not (_local_name(host) or _numeric(host)):
            _refuse(f"a name lookup of {host!r}")
        return getaddrinfo(host, *args, **kwargs)

    socket.socket.connect, socket.socket.connect_ex = guarded_connect, guarded_connect_ex
    socket.getaddrinfo = guarded_getaddrinfo
    socket.socket._emotivetalk_guarded = True


if os.environ.get(LOG_VARIABLE):
    install()

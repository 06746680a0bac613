"""Tests and benchmarks talk only to this machine's loopback (``docs/design.md``, "Test traffic").

Two guards, one rule: a connection may go to 127.0.0.0/8, ``::1`` or ``localhost``, or to a
Unix socket, and nowhere else, this machine's own LAN address included.

* :func:`install_guard` adds an audit hook (``sys.addaudithook``) to this Python process that
  refuses ``socket.connect``, ``socket.sendto`` and name lookups of anything else, raising
  :class:`NonLoopbackTraffic` (not an ``OSError``, so no retry loop swallows it) and
  recording it, so a test fixture can fail the test even if some layer caught the error.
* :data:`CHROMIUM_FLAGS` carries ``--host-resolver-rules`` that send every host name other
  than ``localhost`` and the test names below nowhere, for every Chromium a test launches.
  ``ping-demo.test`` is a made-up name that resolves to 127.0.0.1: a plain-http origin that
  is not a secure context, without leaving the machine.
"""

from __future__ import annotations

import ipaddress
import socket
import sys
from typing import Any

DEMO_HOST = "ping-demo.test"
"""A host name that only the test browsers know, mapped to 127.0.0.1 (not a secure context)."""

HOST_RESOLVER_RULES = f"MAP {DEMO_HOST} 127.0.0.1, MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1"

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    f"--host-resolver-rules={HOST_RESOLVER_RULES}",
]
"""Debian's chromium headless, without the sandbox or GPU, reaching nothing but loopback."""

LOOPBACK_NAMES = frozenset({"localhost", "localhost.", "ip6-localhost"})


class NonLoopbackTraffic(RuntimeError):
    """A test or benchmark tried to reach an address that is not this machine's loopback."""


violations: list[str] = []
"""Every refused attempt in this process, in order (the test fixture reads and clears it)."""


def is_loopback(host: object) -> bool:
    """True for a loopback IP address or the name ``localhost`` (``*.localhost`` too)."""
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    if not isinstance(host, str):
        return False
    name = host.strip("[]").split("%", 1)[0].lower()
    if name in LOOPBACK_NAMES or name.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return bool(address.is_loopback or (mapped is not None and mapped.is_loopback))


def _lookup_allowed(host: object) -> bool:
    # getaddrinfo(None / "" / "0.0.0.0") is how servers bind to a wildcard: not traffic.
    return host in (None, "", b"", "0.0.0.0", "::") or is_loopback(host)


def _refuse(what: str) -> None:
    violations.append(what)
    raise NonLoopbackTraffic(f"{what}: tests and benchmarks may reach only loopback (tools/loopback.py)")


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event in ("socket.connect", "socket.sendto"):
        sock, address = args[0], args[-1]
        if getattr(sock, "family", None) in (socket.AF_INET, socket.AF_INET6) and not is_loopback(address[0]):
            _refuse(f"{event} to {address!r}")
    elif event in ("socket.getaddrinfo", "socket.gethostbyname") and not _lookup_allowed(args[0]):
        _refuse(f"name lookup of {args[0]!r}")


_installed = False


def install_guard() -> None:
    """Refuse non-loopback traffic from this process from now on (idempotent; audit hooks
    cannot be removed)."""
    global _installed
    if not _installed:
        sys.addaudithook(_audit)
        _installed = True


def take_violations() -> list[str]:
    """The refused attempts since the last call (and forget them)."""
    taken = list(violations)
    violations.clear()
    return taken

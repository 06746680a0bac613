"""The loopback-only guard (tools/loopback.py) that every test process runs under."""

from __future__ import annotations

import socket

import pytest

from tools import loopback


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "::1", "localhost", "LOCALHOST", "a.localhost",
                                  "::ffff:127.0.0.1", "[::1]", b"127.0.0.1"])  # fmt: skip
def test_loopback_hosts(host: object) -> None:
    assert loopback.is_loopback(host)


@pytest.mark.parametrize("host", ["192.168.1.10", "10.0.0.1", "0.0.0.0", "::", "example.org", loopback.DEMO_HOST,
                                  "localhost.example.org", "", None, 2130706433])  # fmt: skip
def test_other_hosts(host: object) -> None:
    assert not loopback.is_loopback(host)


def test_a_connect_beyond_loopback_is_refused_before_anything_is_sent() -> None:
    # UDP connect sends nothing, and the audit hook refuses before the system call anyway.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe, pytest.raises(loopback.NonLoopbackTraffic):
        probe.connect(("192.0.2.1", 9))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe, pytest.raises(loopback.NonLoopbackTraffic):
        probe.sendto(b"x", ("192.0.2.1", 9))
    with pytest.raises(loopback.NonLoopbackTraffic):
        socket.getaddrinfo("example.org", 80)
    tried = loopback.take_violations()  # taken here, so the autouse fixture does not fail this test
    assert len(tried) == 3 and "192.0.2.1" in tried[0] and "example.org" in tried[2]


def test_loopback_and_unix_sockets_pass() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("127.0.0.1", 9))
    socket.getaddrinfo("localhost", 80)
    socket.getaddrinfo(None, 80)  # a wildcard bind's lookup
    left, right = socket.socketpair()
    left.close()
    right.close()
    assert loopback.take_violations() == []


def test_every_test_browser_resolves_only_loopback() -> None:
    (rules,) = [flag for flag in loopback.CHROMIUM_FLAGS if flag.startswith("--host-resolver-rules=")]
    assert "MAP * ~NOTFOUND" in rules and f"MAP {loopback.DEMO_HOST} 127.0.0.1" in rules

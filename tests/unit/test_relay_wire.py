"""The relay client's pure parts: what it signs, how it encodes, its origin, its backoff.

The signed contents are checked against the relay's own construction (``ping_relay.auth``),
so the client and the server cannot drift apart.
"""

from __future__ import annotations

import random

import pytest

from ping_relay import auth
from ping_web.core.envelope import Hlc, MessageEnvelope, MessageKind
from ping_web.core.ids import ConversationId, DeviceId
from ping_web.delivery.relay_wire import (
    Backoff,
    Refusal,
    auth_content,
    b64d,
    b64e,
    origin_of,
    register_content,
    roster_content,
    stream_url,
)
from ping_web.errors import InvalidInput


def test_roster_content_is_the_documented_bytes() -> None:
    group, a, b = ConversationId(b"\x01" * 16), DeviceId(b"\x02" * 16), DeviceId(b"\x03" * 16)
    commit = MessageEnvelope.handshake(MessageKind.COMMIT, group, 7, a, 3, Hlc(1, 0), b"payload")
    content = roster_content(commit, [b, a], [])
    h = commit.content_hash
    assert content == group.raw + (7).to_bytes(8, "big") + h + b"\x00\x00\x00\x02" + a.raw + b.raw + b"\x00" * 4
    assert content == auth.roster_content(group.raw, 7, h, [b.raw, a.raw], [])
    removed = [DeviceId(b"\x09" * 16), DeviceId(b"\x05" * 16)]
    assert roster_content(commit, [], removed) == auth.roster_content(group.raw, 7, h, [], [d.raw for d in removed])


def test_register_and_auth_contents_match_the_relay() -> None:
    device, key, user = DeviceId(b"\x07" * 16), b"\x08" * 32, b"alice"
    origin = "http://localhost:8000"
    assert register_content(device, key, user, origin) == auth.register_content(device.raw, key, user, origin)
    challenge = bytes(range(32))
    assert auth_content(challenge, device, origin) == auth.auth_content(challenge, device.raw, origin)
    with pytest.raises(InvalidInput):
        register_content(device, key, b"", origin)
    with pytest.raises(InvalidInput):
        register_content(device, key, b"x" * 256, origin)


@pytest.mark.parametrize("data", [b"", b"\x00", b"\xff" * 31, bytes(range(256))])
def test_base64url_round_trips_unpadded(data: bytes) -> None:
    text = b64e(data)
    assert "=" not in text and "+" not in text and "/" not in text
    assert b64d(text, "x") == data


@pytest.mark.parametrize("text", ["AA==", "A", "**", 5, None])
def test_base64url_refuses_what_the_relay_never_sends(text: object) -> None:
    with pytest.raises(InvalidInput):
        b64d(text, "x")


def test_base64url_checks_sizes() -> None:
    with pytest.raises(InvalidInput):
        b64d(b64e(b"\x00" * 15), "id", size=16)


@pytest.mark.parametrize(
    ("url", "origin"),
    [
        ("http://localhost:8000", "http://localhost:8000"),
        ("http://LOCALHOST:8000/web/", "http://localhost:8000"),
        ("https://relay.example:443", "https://relay.example"),
        ("http://relay.example:80/", "http://relay.example"),
        ("http://192.168.1.10:8787", "http://192.168.1.10:8787"),
        ("http://[::1]:8787", "http://[::1]:8787"),
    ],
)
def test_origin_is_spelled_like_the_relay(url: str, origin: str) -> None:
    assert origin_of(url) == origin


@pytest.mark.parametrize("url", ["ftp://x", "localhost:8000", "", "http://"])
def test_origin_needs_an_http_url(url: str) -> None:
    with pytest.raises(InvalidInput):
        origin_of(url)


def test_stream_url() -> None:
    assert stream_url("http://localhost:8000") == "ws://localhost:8000/v1/stream"
    assert stream_url("https://relay.example/") == "wss://relay.example/v1/stream"


def test_refusal_reads_the_relay_error_body() -> None:
    refusal = Refusal.parse(409, '{"error": "stale_commit", "detail": "taken", "epoch": 7, "head": 31}')
    assert (refusal.status, refusal.error, refusal.detail, refusal.data) == (409, "stale_commit", "taken",
                                                                            {"epoch": 7, "head": 31})  # fmt: skip
    assert Refusal.parse(502, "<html>bad gateway</html>").error == "http_502"
    assert Refusal.parse(500, "").error == "http_500"


def test_backoff_is_jittered_doubling_and_capped() -> None:
    backoff = Backoff(base_s=0.5, cap_s=30.0, rng=random.Random(7))
    delays = [backoff.next_delay() for _ in range(12)]
    for n, delay in enumerate(delays):
        ceiling = min(30.0, 0.5 * 2**n)
        assert ceiling / 2 <= delay <= ceiling
    assert max(delays) <= 30.0 and len(set(delays)) == len(delays)
    backoff.reset()
    assert backoff.next_delay() <= 0.5
    # Two devices that lost the same relay do not retry in lockstep.
    a, b = Backoff(rng=random.Random(1)), Backoff(rng=random.Random(2))
    assert [a.next_delay() for _ in range(5)] != [b.next_delay() for _ in range(5)]

"""Arbitrary JSON at every endpoint (issue 17, item 5): lone surrogates in keys and values,
other encodings than UTF-8, deep nesting, huge numbers, wrong types. Every answer is a
4xx with a JSON error body, nothing is stored, and the relay logs no traceback."""

from __future__ import annotations

import json
import os
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay_client import Device, b64e
from relay_db import dump

pytestmark = pytest.mark.filterwarnings("ignore::hypothesis.errors.NonInteractiveExampleWarning")

FIELDS = [
    "user_id", "device_id", "signature_public_key", "signature", "challenge", "group_id", "envelope",
    "commit", "welcome", "roster", "added", "removed", "joiners", "key_packages", "last_resort", "ids",
]  # fmt: skip


def expect_json_4xx(r: httpx.Response) -> dict[str, Any]:
    """A 4xx whose body is one JSON object with a string ``error``, in strict UTF-8."""
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:300])
    body = r.json()
    assert isinstance(body, dict) and isinstance(body.get("error"), str), r.text[:300]
    r.content.decode("utf-8")  # strict UTF-8 (no lone surrogates)
    return body


@pytest.fixture(scope="module")
def world(relay):
    """A relay holding a valid client's data, and the endpoints to throw bodies at."""
    alice, bob = Device(relay.url).setup(), Device(relay.url).setup()
    group = alice.create_group()
    assert alice.commit(group, 0, added=[bob.device_id]).status_code == 200
    alice.send(group, 1)
    g = b64e(group)
    endpoints = [
        ("/v1/devices", None, ("user_id", "device_id", "signature_public_key", "signature")),
        ("/v1/auth/challenge", None, ("device_id",)),
        ("/v1/auth/token", None, ("device_id", "challenge", "signature")),
        ("/v1/key-packages", alice.token, ("key_packages", "last_resort")),
        (f"/v1/devices/{bob.id}/key-packages/claim", alice.token, ()),
        ("/v1/groups", alice.token, ("group_id",)),
        (f"/v1/groups/{g}/messages", alice.token, ("envelope",)),
        (f"/v1/groups/{g}/commits", alice.token, ("commit", "welcome", "roster")),
        ("/v1/welcomes/ack", bob.token, ("ids",)),
    ]
    yield relay, endpoints
    alice.close()
    bob.close()


def post_raw(relay, path: str, token: str | None, body: bytes) -> httpx.Response:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return httpx.post(relay.url + path, content=body, headers=headers, timeout=60)


def test_lone_surrogates_and_other_encodings_are_400(world) -> None:
    relay, endpoints = world
    before = dump(relay.db)
    bodies = [
        b'{"\\udfff": 1}',  # a lone surrogate as a key: echoed as an unknown field until now
        b'{"\\ud800\\udfff": 1}',  # a valid pair, an unknown key
        b'{"device_id": "\\udfff"}',
        b'{"' + "\U0001f600".encode() + b'": 1}',
        '{"device_id": "x"}'.encode("utf-16"),  # json.loads would read UTF-16 and UTF-32
        '{"device_id": "x"}'.encode("utf-32"),
        b"\xef\xbb\xbf{}",  # a UTF-8 byte order mark
        b"[" * 100_000 + b"]" * 100_000,
        b'{"device_id": ' + b"9" * 10_000 + b"}",
        b'{"device_id": 1e999999}',
        b'{"k' + b"x" * 300_000 + b'": 1}',  # a long unknown key: not echoed whole
    ]
    for path, token, _ in endpoints:
        for body in bodies:
            r = post_raw(relay, path, token, body)
            error = expect_json_4xx(r)
            assert len(r.content) < 4096, (path, body[:40], len(r.content))
            assert r.status_code == 400, (path, body[:40], r.status_code, error)
    assert dump(relay.db) == before
    assert "Traceback" not in relay.log(), relay.log()[-3000:]


# Any JSON value: text with any code point (surrogates included), huge and odd numbers,
# deep nesting; and as bodies, objects whose keys are mostly the relay's own field names.
_CHARS = st.characters() | st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)  # lone surrogates too
_TEXT = st.lists(_CHARS, max_size=40).map("".join)  # st.text() leaves surrogates out
_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=True, allow_infinity=True)
    | _TEXT
    | st.sampled_from(["", "AAAA", "A" * 22, "A" * 43, "!!", "=", b64e(os.urandom(16)), b64e(os.urandom(32))])
)
_KEYS = st.sampled_from(FIELDS) | _TEXT
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_KEYS, inner, max_size=4),
    max_leaves=12,
)


@st.composite
def _bodies(draw: st.DrawFn, fields: tuple[str, ...]) -> Any:
    """Mostly an object with the endpoint's own fields (arbitrary values) and a few other
    keys, so that checks past the first missing field are reached; sometimes any value."""
    if draw(st.integers(0, 9)) == 0:
        return draw(_VALUES)
    body = {name: draw(_VALUES) for name in fields if draw(st.integers(0, 5))}
    body.update(draw(st.dictionaries(_KEYS, _VALUES, max_size=2)))
    return body


def _encode(value: Any, ascii_only: bool, nest: int) -> bytes:
    text = json.dumps(value, ensure_ascii=ascii_only)
    text = "[" * nest + text + "]" * nest
    return text.encode("utf-8", "surrogatepass")  # unescaped lone surrogates: not UTF-8


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_arbitrary_json_gets_a_typed_4xx(world, data) -> None:
    relay, endpoints = world
    path, token, fields = data.draw(st.sampled_from(endpoints))
    value = data.draw(_bodies(fields))
    body = _encode(value, data.draw(st.booleans()), data.draw(st.sampled_from([0, 0, 0, 1, 5000])))
    r = post_raw(relay, path, token, body)
    if r.status_code != 200:  # a drawn body may be valid (e.g. KeyPackages "AAAA"): then it is taken
        expect_json_4xx(r)


def test_no_traceback_after_the_arbitrary_json(world) -> None:
    relay, _ = world
    assert relay.alive()
    assert "Traceback" not in relay.log(), relay.log()[-3000:]

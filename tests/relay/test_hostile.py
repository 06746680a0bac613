"""Hostile input: over 10,000 random and mutated HTTP requests and WebSocket frames
against a running relay holding a valid client's data. The relay answers each with a
4xx, stays up, and its database content is unchanged (a dump before and after).

Seeded (PING_RELAY_FUZZ_SEED, default 20261202) so a failure can be replayed. A
mutation of a valid request is kept only if it is invalid by construction; an
envelope mutation is kept only if ping_web's own decoder refuses it.
"""

from __future__ import annotations

import json
import os
import random
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from websockets.exceptions import ConnectionClosed

from ping_web.core.envelope import MessageEnvelope

from relay_client import Device, b64d, b64e, recv_json
from relay_db import dump


def stored(db: str) -> dict:
    """The database content, less the record of which connection owns each device's stream
    (a valid stream connection of the fuzz writes it; it is not content)."""
    content = dump(db)
    content.pop("streams", None)
    return content


SEED = int(os.environ.get("PING_RELAY_FUZZ_SEED", "20261202"))
HTTP_REQUESTS = 8_400
WS_FRAMES = 2_400
RAW_REQUESTS = 200
MAX_BODY = 64 * 1024
BAD_VALUES: list[Any] = [None, -1, 1.5, True, "", "!!", {}, {"a": 1}, [None], [True], ["!"]]
B64_BREAKERS = "!=+/ .%\u00e9\x00"


@dataclass
class Template:
    """A valid request (not sent as is): what the mutations start from."""

    method: str
    path: str
    token: str | None
    body: dict[str, Any] | None = None
    query: dict[str, str] = field(default_factory=dict)
    envelopes: tuple[str, ...] = ()  # body keys holding base64url envelopes
    foreign_tokens: tuple[str, ...] = ()  # tokens for which the unmodified body is refused


def _keys(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Paths to every value inside a JSON object (dict keys and list indexes)."""
    out = []
    if isinstance(value, dict):
        for k, v in value.items():
            out.append((*prefix, k))
            out += _keys(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out.append((*prefix, i))
            out += _keys(v, (*prefix, i))
    return out


def _get(value: Any, path: tuple) -> Any:
    for p in path:
        value = value[p]
    return value


def _set(value: Any, path: tuple, new: Any) -> None:
    _get(value, path[:-1])[path[-1]] = new


def _strings(value: Any) -> list[tuple]:
    return [p for p in _keys(value) if isinstance(_get(value, p), str)]


class Mutator:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def bad_b64(self, text: str) -> str:
        i = self.rng.randrange(len(text) + 1)
        return text[:i] + self.rng.choice(B64_BREAKERS) + text[i:]

    def broken_envelope(self, text: str) -> str:
        data = bytearray(b64d(text))
        while True:
            for _ in range(self.rng.randint(1, 4)):
                op = self.rng.randrange(3)
                i = self.rng.randrange(len(data))
                if op == 0:
                    data[i] ^= 1 << self.rng.randrange(8)
                elif op == 1 and len(data) > 1:
                    del data[i]
                else:
                    data.insert(i, self.rng.randrange(256))
            try:
                MessageEnvelope.decode(bytes(data))
            except Exception:
                return b64e(bytes(data))

    def body(self, t: Template) -> tuple[bytes, str]:
        """A body that is invalid for ``t`` by construction, and its content type."""
        rng = self.rng
        body = json.loads(json.dumps(t.body or {}))
        ops = ["extra", "truncate", "garbage", "non_object", "content_type", "dup"]
        if body:
            ops += ["drop", "wrong_type", "wrong_type", "bad_b64", "bad_b64"]
        if t.envelopes:
            ops += ["envelope", "envelope", "envelope"]
        op = rng.choice(ops)
        kind = "application/json"
        if op == "drop":
            del body[rng.choice(list(body))]
        elif op == "extra":
            body["zz" + str(rng.randrange(1000))] = rng.choice([1, "x", None, []])
        elif op == "wrong_type":
            _set(body, rng.choice(_keys(body)), rng.choice(BAD_VALUES))
        elif op == "bad_b64":
            paths = _strings(body)
            if not paths:
                return b"{", kind
            p = rng.choice(paths)
            _set(body, p, self.bad_b64(_get(body, p)))
        elif op == "envelope":
            key = rng.choice(t.envelopes)
            p = ("welcome", "envelope") if key == "welcome.envelope" else (key,)
            _set(body, p, self.broken_envelope(_get(body, p)))
        text = json.dumps(body).encode()
        if op == "truncate":
            text = text[: rng.randrange(1, max(2, len(text)))]
        elif op == "garbage":
            text = rng.randbytes(rng.randrange(0, 300))
        elif op == "non_object":
            text = json.dumps(rng.choice([[body], 7, "text", None, True])).encode()
        elif op == "content_type":
            kind = rng.choice(["text/plain", "application/cbor", "", "application/x-www-form-urlencoded"])
        elif op == "dup":
            first = next(iter(body), "k")
            text = b'{"' + first.encode() + b'": 1, ' + (text[1:] if body else b'"' + first.encode() + b'": 1}')
        return text, kind

    def query(self, t: Template) -> dict[str, str] | list[tuple[str, str]]:
        rng = self.rng
        bad = {"after": ["-1", "x", "01", "", "1e3", str(2**63), " 1", "+1"], "limit": ["0", "100001", "-5", "ten"]}
        op = rng.randrange(3)
        if op == 0:
            key = rng.choice(list(bad))
            return {**t.query, key: rng.choice(bad[key])}
        if op == 1:
            return {**t.query, "z" + str(rng.randrange(99)): "1"}
        return [("after", "0"), ("after", "1")]

    def path(self, t: Template, foreign_group: str) -> str:
        segments = t.path.split("/")
        ids = [i for i, s in enumerate(segments) if len(s) == 22]
        if not ids:
            return t.path + self.rng.choice(["/x", "x", "/..", "/%00"])
        i = self.rng.choice(ids)
        if "groups" in segments and self.rng.random() < 0.3:
            segments[i] = foreign_group  # a group this device is not in: 403
        elif self.rng.random() < 0.5:
            segments[i] = self.bad_b64(segments[i]).translate(str.maketrans("/%.\x00", "!!!!"))
        else:
            segments[i] = segments[i][: self.rng.randrange(0, 21)]
        return "/".join(segments)

    def token(self, token: str) -> str | None:
        rng = self.rng
        op = rng.randrange(4)
        if op == 0:
            return None
        if op == 1:
            return b64e(rng.randbytes(32))
        if op == 2:
            i = rng.randrange(len(token))
            return token[:i] + ("A" if token[i] != "A" else "B") + token[i + 1 :]
        return rng.choice(["x", "x" * 43, token + "A", token[:-1]])


def test_hostile_input(spawn) -> None:
    relay = spawn("--max-body-bytes", str(MAX_BODY))
    rng = random.Random(SEED)
    mutate = Mutator(rng)
    # a valid client's data: a group with a commit, messages, KeyPackages, a pending Welcome
    alice, bob, carol, dave, mallory = (Device(relay.url).setup() for _ in range(5))
    group = alice.create_group()
    assert alice.commit(group, 0, added=[bob.device_id, carol.device_id]).status_code == 200
    for i in range(5):
        alice.send(group, 1, f"a{i}".encode())
        bob.send(group, 1, f"b{i}".encode())
    assert bob.publish([os.urandom(64) for _ in range(3)], last_resort=os.urandom(64)).status_code == 200
    other_group = mallory.create_group()
    bob_welcome = bob.ok("GET", "/v1/welcomes")["welcomes"][0]["id"]
    assert bob.ok("POST", "/v1/welcomes/ack", {"ids": [bob_welcome]}) == {"acked": 1}
    carol_welcome = carol.ok("GET", "/v1/welcomes")["welcomes"][0]["id"]
    g, og = b64e(group), b64e(other_group)
    newcomer = Device(relay.url)
    register_body = newcomer.register_body()
    templates = [
        Template(
            "POST",
            f"/v1/groups/{g}/messages",
            alice.token,
            {"envelope": b64e(alice.application(group, 1).encode())},
            envelopes=("envelope",),
            foreign_tokens=(bob.token, mallory.token),
        ),
        Template(
            "POST",
            f"/v1/groups/{g}/commits",
            alice.token,
            alice.commit_body(group, 1, [dave.device_id]),
            envelopes=("commit", "welcome.envelope"),
            foreign_tokens=(bob.token, mallory.token),
        ),
        Template("POST", "/v1/key-packages", bob.token, {"key_packages": [b64e(os.urandom(64))]}),
        Template("POST", f"/v1/devices/{bob.id}/key-packages/claim", alice.token, {}),
        Template("POST", "/v1/groups", alice.token, {"group_id": b64e(os.urandom(16))}),
        Template("POST", "/v1/welcomes/ack", carol.token, {"ids": [carol_welcome]}),
        Template("POST", "/v1/auth/challenge", None, {"device_id": alice.id}),
        Template("POST", "/v1/devices", None, register_body),
        Template("GET", f"/v1/groups/{g}/messages", alice.token, query={"after": "0"}),
        Template("GET", "/v1/welcomes", carol.token, query={"after": "0"}),
        Template("GET", f"/v1/groups/{g}", alice.token),
        Template("GET", f"/v1/devices/{bob.id}", alice.token),
        Template("GET", f"/v1/users/{b64e(bob.user_id)}/devices", alice.token),
        Template("GET", "/v1/key-packages", bob.token),
    ]
    words = [
        "v1",
        "groups",
        "devices",
        "key-packages",
        "claim",
        "messages",
        "commits",
        "welcomes",
        "ack",
        "auth",
        "challenge",
        "token",
        "users",
        "stream",
        g,
        alice.id,
        "",
        "..",
        "%00",
        "%ff",
        "x" * 300,
    ]

    def random_request() -> tuple[str, str, dict[str, str], bytes]:
        method = rng.choice(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"])
        path = "/" + "/".join(rng.choice(words) for _ in range(rng.randint(0, 5)))
        if rng.random() < 0.3:
            path += "?" + rng.choice(["after=1", "limit=x", "a=%00", "&&&", "after=-1&after=2"])
        headers = {}
        if rng.random() < 0.5:
            headers["Authorization"] = rng.choice(
                ["Bearer " + b64e(rng.randbytes(32)), "Bearer", "Basic x", "bearer !"]
            )
        if rng.random() < 0.5:
            headers["Content-Type"] = rng.choice(["application/json", "text/plain", "application/json; charset=x"])
        body = (
            rng.randbytes(rng.randrange(0, 200)) if rng.random() < 0.7 else json.dumps({"device_id": alice.id}).encode()
        )
        return method, path, headers, body

    def mutated_request() -> tuple[str, str, dict[str, str], bytes | None, Any]:
        t = rng.choice(templates)
        headers = {"Authorization": f"Bearer {t.token}"} if t.token else {}
        body: bytes | None = json.dumps(t.body).encode() if t.body is not None else None
        params: Any = t.query
        path, method = t.path, t.method
        ops = ["path", "method"]
        if t.token:
            ops.append("token")
        if t.foreign_tokens:
            ops.append("foreign")
        if t.body is not None:
            ops += ["body"] * 6 + ["oversize"]
        if t.method == "GET" and t.query:
            ops += ["query"] * 2
        op = rng.choice(ops)
        if op == "token":
            token = mutate.token(t.token)
            headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        elif op == "foreign":
            headers = {"Authorization": f"Bearer {rng.choice(t.foreign_tokens)}"}
        elif op == "body":
            body, kind = mutate.body(t)
            headers["Content-Type"] = kind
        elif op == "oversize":
            body = b'{"x": "' + b"A" * (MAX_BODY + rng.randrange(1, 5000)) + b'"}'
        elif op == "query":
            params = mutate.query(t)
        elif op == "path":
            path = mutate.path(t, og)
        elif op == "method":
            method = rng.choice([m for m in ["GET", "POST", "PUT", "DELETE", "PATCH"] if m != t.method])
            if t.path.endswith(("/messages", "/v1/key-packages")) and method in ("GET", "POST"):
                method = "PUT"
        if body is not None:
            headers.setdefault("Content-Type", "application/json")
        return method, path, headers, body, params

    before = stored(relay.db)
    requests = [mutated_request() if rng.random() < 0.75 else (*random_request(), None) for _ in range(HTTP_REQUESTS)]
    failures: list[str] = []
    counts: dict[int, int] = {}
    lock = threading.Lock()

    def run(chunk: list) -> None:
        with httpx.Client(base_url=relay.url, timeout=60) as http:
            for method, path, headers, body, params in chunk:
                try:
                    r = http.request(method, path, headers=headers, content=body, params=params)
                except Exception as exc:
                    with lock:
                        failures.append(f"{method} {path}: {exc!r}")
                    continue
                with lock:
                    counts[r.status_code] = counts.get(r.status_code, 0) + 1
                    if not 400 <= r.status_code < 500:
                        failures.append(
                            f"{method} {path} {headers} {body[:200] if body else body!r} -> {r.status_code} {r.text[:300]}"
                        )
                    elif method != "HEAD" and "error" not in r.json():
                        failures.append(f"{method} {path} -> {r.status_code} without a typed error: {r.text[:200]}")

    threads = [threading.Thread(target=run, args=(requests[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, "\n".join(failures[:20])

    # raw bytes that are not HTTP
    for _ in range(RAW_REQUESTS):
        junk = rng.choice(
            [
                rng.randbytes(rng.randrange(1, 200)),
                b"GET / HTTP/9.9\r\n\r\n",
                b"\x16\x03\x01\x00\xa5\x01",
                b"POST /v1/groups HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
                b"GET /v1/nope HTTP/1.1\r\nHost: " + b"x" * 70_000 + b"\r\n\r\n",
            ]
        )
        with socket.create_connection(("127.0.0.1", relay.port), timeout=10) as s:
            s.sendall(junk if junk.endswith(b"\r\n\r\n") or b"HTTP" in junk else junk + b"\r\n\r\n")
            s.shutdown(socket.SHUT_WR)
            reply = b""
            while chunk := s.recv(4096):
                reply += chunk
        assert reply == b"" or reply.startswith(b"HTTP/1.1 4"), reply[:200]

    ws_answers = fuzz_stream(rng, alice, group, other_group)
    assert relay.alive()
    assert "Traceback" not in relay.log(), relay.log()[-3000:]
    assert stored(relay.db) == before
    total = HTTP_REQUESTS + RAW_REQUESTS + ws_answers
    assert total >= 10_000
    # and it still serves the valid client
    assert alice.fetch(group).json()["head"] == 11
    assert sum(counts.values()) == HTTP_REQUESTS
    print(
        f"hostile: {HTTP_REQUESTS} HTTP requests, {RAW_REQUESTS} raw, {ws_answers} stream frames; statuses {sorted(counts.items())}"
    )
    for d in (alice, bob, carol, dave, mallory, newcomer):
        d.close()


def fuzz_stream(rng: random.Random, alice: Device, group: bytes, other_group: bytes) -> int:
    """Send invalid frames in batches, each batch followed by a ping; every frame before the
    pong must be a 4xx error frame, one per frame sent. Returns the frames answered."""
    valid = {"type": "subscribe", "groups": [{"group_id": b64e(group), "after": 0}]}
    mutate = Mutator(rng)
    templates: list[Callable[[], str | bytes]] = [
        lambda: rng.randbytes(rng.randrange(1, 300)),
        lambda: "".join(chr(rng.randrange(32, 0x2FF)) for _ in range(rng.randrange(0, 80))),
        lambda: json.dumps(rng.choice([[], 1, "x", None, {"type": rng.choice(["pong", "entry", "", 5, None])}])),
        lambda: json.dumps({**valid, "zz": 1}),
        lambda: json.dumps({"type": "subscribe", "groups": rng.choice([*BAD_VALUES[:-3], []])}),
        lambda: json.dumps({"type": "subscribe", "groups": [{"group_id": rng.choice(BAD_VALUES), "after": 0}]}),
        lambda: json.dumps(
            {
                "type": "subscribe",
                "groups": [{"group_id": b64e(group), "after": rng.choice([-1, 1.5, True, "0", None, 2**64])}],
            }
        ),
        lambda: json.dumps({"type": "subscribe", "groups": [{"group_id": mutate.bad_b64(b64e(group)), "after": 0}]}),
        lambda: json.dumps({"type": "subscribe", "groups": [{"group_id": b64e(group), "after": 0, "x": 1}]}),
        lambda: json.dumps({"type": "subscribe", "groups": [{"group_id": b64e(group), "after": 0}] * 2}),
        lambda: json.dumps({"type": "unsubscribe", "groups": rng.choice([[1], ["!"], {}, "x", []])}),
        lambda: json.dumps({"type": "ping", "groups": []}),
        lambda: json.dumps(valid)[: rng.randrange(1, 40)],
    ]
    answered = 0
    with alice.stream() as ws:
        assert recv_json(ws)["type"] == "ready"
        while answered < WS_FRAMES:
            batch = [rng.choice(templates)() for _ in range(50)]
            for frame in batch:
                ws.send(frame)
            ws.send(json.dumps({"type": "ping"}))
            replies = []
            while (reply := recv_json(ws)) != {"type": "pong"}:
                replies.append(reply)
            assert len(replies) == len(batch), replies[:5]
            for reply in replies:
                assert reply["type"] == "error", reply
                assert 400 <= reply["status"] < 500, reply
            answered += len(batch)
    # frames over the size limit end the connection with 1009, nothing else
    for _ in range(5):
        with alice.stream() as ws:
            assert recv_json(ws)["type"] == "ready"
            ws.send("{" + "x" * (64 * 1024 + rng.randrange(1, 5000)))
            try:
                while True:
                    ws.recv(timeout=10)
            except ConnectionClosed as closed:
                assert closed.rcvd is not None and closed.rcvd.code == 1009
        answered += 1
    # the stream with forged tokens
    for _ in range(20):
        forged = Device(alice.base_url)
        forged.token = mutate.token(alice.token) or "none"
        with forged.stream() as ws:
            frame = recv_json(ws)
            assert frame["type"] == "error" and frame["status"] in (401, 429)
        forged.close()
        answered += 1
    return answered

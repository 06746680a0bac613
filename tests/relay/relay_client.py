"""A small synchronous client of the relay protocol (docs/relay.md), for the tests.

It signs with `cryptography`'s Ed25519 over the same construction the wasm module uses
(b"ping-web/" + label + b"\\x00" + content) and builds real ping_web envelopes.
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Iterable
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from websockets.sync.client import ClientConnection, connect

from ping_web.core import devlog
from ping_web.core.devlog import LogEntry, LogOp
from ping_web.core.envelope import Hlc, MessageEnvelope, MessageKind
from ping_web.core.ids import ConversationId, DeviceId, UserId

ORIGIN = "http://relay.test"
SUBPROTOCOL = "ping-relay.v1"


def b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def signing_input(label: str, content: bytes) -> bytes:
    return b"ping-web/" + label.encode("ascii") + b"\x00" + content


def roster_content(
    group: bytes, epoch: int, commit_hash: bytes, added: Iterable[bytes], removed: Iterable[bytes]
) -> bytes:
    out = group + epoch.to_bytes(8, "big") + commit_hash
    for ids in (sorted(added), sorted(removed)):
        out += len(ids).to_bytes(4, "big") + b"".join(ids)
    return out


def new_group_id() -> bytes:
    return ConversationId(os.urandom(16)).raw


class Device:
    """One device: its Ed25519 key, ids, per-group seq counters, an HTTP client."""

    def __init__(self, base_url: str, user_id: bytes | None = None, origin: str = ORIGIN) -> None:
        self.base_url = base_url
        self.origin = origin
        self.key = Ed25519PrivateKey.generate()
        self.public_key = self.key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.device_id = DeviceId(os.urandom(16)).raw
        self.user_id = user_id or os.urandom(8)
        self.http = httpx.Client(base_url=base_url, timeout=60)
        self.token: str | None = None
        self.seqs: dict[bytes, int] = {}
        self.linked = False
        """Added to its user's log by another device (it registers without a genesis)."""

    def close(self) -> None:
        self.http.close()

    @property
    def id(self) -> str:
        return b64e(self.device_id)

    def sign(self, label: str, content: bytes) -> bytes:
        return self.key.sign(signing_input(label, content))

    # -- auth ---------------------------------------------------------------------------

    def register_body(self, *, genesis: bool = True) -> dict[str, Any]:
        """The registration request; with the genesis entry of the user's device log (a new
        user's first device), unless ``genesis`` is false (a device another one added)."""
        content = self.device_id + self.public_key + bytes([len(self.user_id)]) + self.user_id + self.origin.encode()
        return {
            "user_id": b64e(self.user_id),
            "device_id": self.id,
            "signature_public_key": b64e(self.public_key),
            "signature": b64e(self.sign("relay-register", content)),
            "device_log": b64e(
                devlog.genesis(
                    UserId(self.user_id),
                    DeviceId(self.device_id),
                    self.public_key,
                    self.sign,
                    ts_ms=int(time.time() * 1000),
                )
            )
            if genesis
            else None,
        }

    def register(self, *, genesis: bool | None = None) -> httpx.Response:
        """Register; a device another one added (:meth:`add_device`) sends no genesis."""
        return self.http.post(
            "/v1/devices", json=self.register_body(genesis=not self.linked if genesis is None else genesis)
        )

    # -- the device log -------------------------------------------------------------------

    def consent(self) -> bytes:
        content = devlog.consent_content(UserId(self.user_id), DeviceId(self.device_id), self.public_key)
        return self.sign(devlog.LABEL_CONSENT, content)

    def log_entry(self, op: LogOp, subject: Device, seq: int, prev: bytes) -> bytes:
        """An entry this device signs about ``subject`` (itself for a genesis)."""
        unsigned = devlog.unsigned_entry(op, UserId(self.user_id), seq, prev, int(time.time() * 1000),
                                         DeviceId(subject.device_id), subject.public_key, self.public_key)  # fmt: skip
        consent = subject.consent() if op is LogOp.ADD else None
        return devlog.signed(unsigned, self.sign(devlog.LABEL_ENTRY, unsigned.tbs()), consent).encode()

    def read_log(self, user_id: bytes | None = None) -> list[bytes]:
        r = self.http.get(f"/v1/users/{b64e(user_id or self.user_id)}/device-log")
        assert r.status_code == 200, r.text
        return [b64d(e) for e in r.json()["entries"]]

    def next_entry(self, op: LogOp, subject: Device) -> bytes:
        entries = self.read_log()
        return self.log_entry(op, subject, len(entries), LogEntry.decode(entries[-1]).hash)

    def append(self, entry: bytes) -> httpx.Response:
        return self.call("POST", f"/v1/users/{b64e(self.user_id)}/device-log", {"entry": b64e(entry)})

    def add_device(self, other: Device) -> Device:
        """Add ``other`` (same user) to the user's device log: the relay then registers it."""
        r = self.append(self.next_entry(LogOp.ADD, other))
        assert r.status_code == 200, r.text
        other.linked = True
        return other

    def revoke_device(self, other: Device) -> httpx.Response:
        return self.append(self.next_entry(LogOp.REVOKE, other))

    def challenge(self) -> bytes:
        r = self.http.post("/v1/auth/challenge", json={"device_id": self.id})
        assert r.status_code == 200, r.text
        return b64d(r.json()["challenge"])

    def answer(self, challenge: bytes, signature: bytes | None = None) -> httpx.Response:
        if signature is None:
            signature = self.sign("relay-auth", challenge + self.device_id + self.origin.encode())
        return self.http.post(
            "/v1/auth/token",
            json={"device_id": self.id, "challenge": b64e(challenge), "signature": b64e(signature)},
        )

    def login(self) -> Device:
        r = self.answer(self.challenge())
        assert r.status_code == 200, r.text
        self.token = r.json()["token"]
        return self

    def setup(self) -> Device:
        r = self.register()
        assert r.status_code == 200, r.text
        return self.login()

    # -- HTTP -----------------------------------------------------------------------------

    def call(self, method: str, path: str, body: Any = None, params: dict[str, Any] | None = None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        return self.http.request(method, path, json=body, params=params, headers=headers)

    def ok(self, method: str, path: str, body: Any = None, params: dict[str, Any] | None = None) -> dict[str, Any]:
        r = self.call(method, path, body, params)
        assert r.status_code == 200, (r.status_code, r.text)
        return r.json()

    # -- envelopes ------------------------------------------------------------------------

    def next_seq(self, group: bytes) -> int:
        self.seqs[group] = self.seqs.get(group, 0) + 1
        return self.seqs[group]

    def application(self, group: bytes, epoch: int, text: bytes = b"hello", seq: int | None = None) -> MessageEnvelope:
        seq = self.next_seq(group) if seq is None else seq
        return MessageEnvelope.application(
            ConversationId(group),
            epoch,
            DeviceId(self.device_id),
            seq,
            Hlc(int(time.time() * 1000), 0),
            b"ciphertext:" + text,
            text,
        )

    def handshake(
        self, kind: MessageKind, group: bytes, epoch: int, seq: int, hlc: Hlc, payload: bytes
    ) -> MessageEnvelope:
        return MessageEnvelope.handshake(
            kind, ConversationId(group), epoch, DeviceId(self.device_id), seq, hlc, payload
        )

    def create_group(self, group: bytes | None = None) -> bytes:
        group = group or new_group_id()
        self.ok("POST", "/v1/groups", {"group_id": b64e(group)})
        return group

    def post(self, group: bytes, envelope: MessageEnvelope) -> httpx.Response:
        return self.call("POST", f"/v1/groups/{b64e(group)}/messages", {"envelope": b64e(envelope.encode())})

    def send(self, group: bytes, epoch: int, text: bytes = b"hello") -> int:
        r = self.post(group, self.application(group, epoch, text))
        assert r.status_code == 200, r.text
        return int(r.json()["seq"])

    def commit_body(
        self,
        group: bytes,
        epoch: int,
        added: list[bytes] = (),  # type: ignore[assignment]
        removed: list[bytes] = (),  # type: ignore[assignment]
        *,
        seq: int | None = None,
        payload: bytes | None = None,
    ) -> dict[str, Any]:
        seq = self.next_seq(group) if seq is None else seq
        hlc = Hlc(int(time.time() * 1000), 0)
        commit = self.handshake(MessageKind.COMMIT, group, epoch, seq, hlc, payload or os.urandom(48))
        welcome = None
        if added:
            w = self.handshake(MessageKind.WELCOME, group, epoch + 1, seq, hlc, b"welcome:" + os.urandom(32))
            welcome = {"envelope": b64e(w.encode()), "joiners": [b64e(d) for d in added]}
        signature = self.sign("relay-roster", roster_content(group, epoch, commit.content_hash, added, removed))
        return {
            "commit": b64e(commit.encode()),
            "welcome": welcome,
            "roster": {
                "added": [b64e(d) for d in added],
                "removed": [b64e(d) for d in removed],
                "signature": b64e(signature),
            },
        }

    def commit(
        self, group: bytes, epoch: int, added: Iterable[bytes] = (), removed: Iterable[bytes] = ()
    ) -> httpx.Response:
        return self.call(
            "POST", f"/v1/groups/{b64e(group)}/commits", self.commit_body(group, epoch, list(added), list(removed))
        )

    def fetch(self, group: bytes, after: int = 0, limit: int | None = None) -> httpx.Response:
        params: dict[str, Any] = {"after": after}
        if limit is not None:
            params["limit"] = limit
        return self.call("GET", f"/v1/groups/{b64e(group)}/messages", params=params)

    def fetch_all(self, group: bytes, after: int = 0) -> list[tuple[int, bytes]]:
        out: list[tuple[int, bytes]] = []
        while True:
            page = self.fetch(group, after)
            assert page.status_code == 200, page.text
            body = page.json()
            for e in body["entries"]:
                out.append((e["seq"], b64d(e["envelope"])))
                after = e["seq"]
            if not body["more"]:
                return out

    def publish(self, key_packages: list[bytes], last_resort: bytes | None = None) -> httpx.Response:
        body: dict[str, Any] = {"key_packages": [b64e(k) for k in key_packages]}
        if last_resort is not None:
            body["last_resort"] = b64e(last_resort)
        return self.call("POST", "/v1/key-packages", body)

    def claim(self, device_id: bytes) -> httpx.Response:
        return self.call("POST", f"/v1/devices/{b64e(device_id)}/key-packages/claim", {})

    # -- stream ---------------------------------------------------------------------------

    def stream(self, **kwargs: Any) -> ClientConnection:
        url = self.base_url.replace("http://", "ws://") + "/v1/stream"
        return connect(url, subprotocols=[SUBPROTOCOL, f"bearer.{self.token}"], open_timeout=20, **kwargs)


def recv_json(ws: ClientConnection, timeout: float = 20) -> dict[str, Any]:
    return json.loads(ws.recv(timeout=timeout))


def subscribe(ws: ClientConnection, groups: dict[bytes, int]) -> None:
    ws.send(json.dumps({"type": "subscribe", "groups": [{"group_id": b64e(g), "after": a} for g, a in groups.items()]}))

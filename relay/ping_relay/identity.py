"""Users' device logs and device links (docs/relay.md, "Device logs" and "Links").

The relay keeps each user's device log (``ping_web.core.devlog``) and checks every entry
with the same rules and signatures the clients check, so spam and forgeries stop at the
door; no client relies on it. A new user id registers with its genesis entry; a device of
an existing user is registered by the entry that added it, signed by one of the user's
devices; a revocation drops the device's tokens, KeyPackages and stream at once. Links are
slots a user's device opens for a new device's sealed request and its own sealed answer
(``ping_web.core.linking``): the relay stores them and reads neither.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Final

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from ping_web.core.devlog import MAX_LOG_ENTRIES, DeviceLog, LogEntry, LogOp
from ping_web.core.linking import LINK_ID_SIZE, MAX_LINK_MESSAGE
from ping_web.errors import PingError

from . import auth, wire
from .errors import JsonValue, RelayError, bad_request, conflict, forbidden, not_found
from .notify import device_key
from .relay import now_ms
from .routes import (
    USER_ID_MAX,
    anonymous,
    authenticate,
    check_query,
    json_body,
    limit_anonymous,
    ok,
    path_id,
    relay_of,
)
from .sqlstore import Backend, Tx, _bytes, _int, _lock_user
from .storage import Device

LINK_TTL_MS: Final = 10 * 60 * 1000
"""How long a link slot waits for the new device and its approval."""
MAX_OPEN_LINKS: Final = 8
"""Link slots one user may have open at once."""
LOG_PAGE: Final = 256
REVOKED_OWNER: Final = bytes(16)
"""The stream owner recorded for a revoked device: its open stream closes (4409)."""


def invalid_entry(detail: str) -> RelayError:
    return bad_request("invalid_log_entry", detail, field="entry")


def _log_of(t: Tx, user_id: bytes) -> list[bytes]:
    rows = t.all("SELECT entry FROM device_logs WHERE user_id = ? ORDER BY seq", user_id)
    return [_bytes(row[0]) for row in rows]


def _verified(entries: list[bytes]) -> DeviceLog:
    """A stored log (checked when each entry was taken): rules and chain, not signatures."""
    return DeviceLog.replay(entries, None)


class LinkPart(Enum):
    """The two messages of a link slot (and their columns)."""

    REQUEST = "request"
    ANSWER = "answer"


@dataclass(frozen=True, slots=True)
class Appended:
    """What an accepted entry changed: the device it added or revoked (``None`` if the very
    entry was there already)."""

    op: LogOp | None
    device_id: bytes | None


class IdentityStore:
    """Device logs, registration by log entry, revocation, link slots: SQL on the relay's backend."""

    def __init__(self, backend: Backend, max_devices_per_user: int) -> None:
        self._db = backend
        self._verifier = auth.Verifier()
        self._max_devices = max_devices_per_user

    async def register(self, device: Device, genesis: bytes | None) -> bool:
        """Register ``device``: created (True), already there (False), or refused: a user with
        a log registers only devices its log added (``link_required``), a new user only with
        its genesis entry, made by this very device."""

        def tx(t: Tx) -> bool:
            row = t.one("SELECT user_id, public_key, revoked_at_ms FROM devices WHERE device_id = ?" + t.lock,
                        device.device_id)  # fmt: skip
            if row is not None:
                if _bytes(row[0]) != device.user_id or _bytes(row[1]) != device.public_key:
                    raise conflict("device_conflict", "this device id is registered with another user or key")
                if row[2] is not None:
                    raise forbidden("device_revoked", "this device was revoked from its user's device log")
                return False
            _lock_user(t, device.user_id)  # one first device per user id, across processes too
            if t.one("SELECT 1 FROM device_logs WHERE user_id = ? AND seq = 0", device.user_id) is not None:
                raise forbidden("link_required", "this user id has devices: one of them must add this device (link it)")
            if genesis is None:
                raise bad_request("genesis_required", "a new user id registers with its device log's genesis entry")
            entry = self._check_genesis(genesis, device)
            t.run(
                "INSERT INTO devices (device_id, user_id, public_key, registered_at_ms) VALUES (?, ?, ?, ?)",
                device.device_id, device.user_id, device.public_key, device.registered_at_ms,
            )  # fmt: skip
            t.run("INSERT INTO device_logs (user_id, seq, entry, entry_hash) VALUES (?, 0, ?, ?)",
                  device.user_id, genesis, entry.hash)  # fmt: skip
            return True

        return await self._db.write(tx)

    def _check_genesis(self, genesis: bytes, device: Device) -> LogEntry:
        try:
            DeviceLog.start(genesis, self._verifier)
            entry = LogEntry.decode(genesis)
        except PingError as exc:
            raise invalid_entry(f"device_log: {exc}") from None
        if (entry.user_id.raw, entry.device_id.raw, entry.device_key) != (
            device.user_id, device.device_id, device.public_key
        ):  # fmt: skip
            raise invalid_entry("device_log: the genesis entry names another user, device or key")
        return entry

    async def append(self, signer: Device, entry_bytes: bytes, now: int) -> Appended:
        """Append an entry ``signer`` signed to its own user's log (a genesis starts a log a
        device registered before logs existed). Its effects land in the same transaction."""
        try:
            entry = LogEntry.decode(entry_bytes)
        except PingError as exc:
            raise invalid_entry(str(exc)) from None
        if entry.user_id.raw != signer.user_id or entry.signer_key != signer.public_key:
            raise forbidden("wrong_signer", "a device appends only entries it signed, to its own user's log")

        def tx(t: Tx) -> Appended:
            _lock_user(t, signer.user_id)
            stored = t.one("SELECT entry FROM device_logs WHERE user_id = ? AND seq = ?" + t.lock,
                           signer.user_id, entry.seq)  # fmt: skip
            if stored is not None:
                if _bytes(stored[0]) == entry_bytes:
                    return Appended(None, None)
                raise conflict("log_conflict", f"entry {entry.seq} of this log is taken: read the log and retry")
            entries = _log_of(t, signer.user_id)
            if len(entries) >= MAX_LOG_ENTRIES:
                raise forbidden("log_full", f"a device log holds at most {MAX_LOG_ENTRIES} entries")
            try:
                if entries:
                    _verified(entries).extend([entry_bytes], self._verifier)
                else:
                    DeviceLog.start(entry_bytes, self._verifier)
            except PingError as exc:
                if entries and entry.seq != len(entries):
                    raise conflict(
                        "log_conflict", f"the log's next entry is {len(entries)}: read it and retry"
                    ) from None
                raise invalid_entry(str(exc)) from None
            t.run("INSERT INTO device_logs (user_id, seq, entry, entry_hash) VALUES (?, ?, ?, ?)",
                  signer.user_id, entry.seq, entry_bytes, entry.hash)  # fmt: skip
            self._apply(t, entry, now, self._max_devices)
            return Appended(entry.op, entry.device_id.raw)

        return await self._db.write(tx)

    @staticmethod
    def _apply(t: Tx, entry: LogEntry, now: int, max_devices: int) -> None:
        device_id = entry.device_id.raw
        if entry.op is LogOp.ADD:
            row = t.one("SELECT user_id, public_key FROM devices WHERE device_id = ?", device_id)
            if row is not None and (_bytes(row[0]), _bytes(row[1])) != (entry.user_id.raw, entry.device_key):
                raise conflict("device_conflict", "the added device id is registered with another user or key")
            count = t.one("SELECT COUNT(*) FROM devices WHERE user_id = ?", entry.user_id.raw)
            if row is None and count is not None and _int(count[0]) >= max_devices:
                raise conflict("too_many_devices", f"a user has at most {max_devices} devices at this relay, revoked "
                               "ones included", limit=max_devices)  # fmt: skip
            if row is None:
                t.run("INSERT INTO devices (device_id, user_id, public_key, registered_at_ms) VALUES (?, ?, ?, ?)",
                      device_id, entry.user_id.raw, entry.device_key, now)  # fmt: skip
        elif entry.op is LogOp.REVOKE:
            t.run("UPDATE devices SET revoked_at_ms = ? WHERE device_id = ?", now, device_id)
            t.run("DELETE FROM tokens WHERE device_id = ?", device_id)
            t.run("DELETE FROM key_packages WHERE device_id = ?", device_id)
            t.run("DELETE FROM challenges WHERE device_id = ?", device_id)
            if (
                t.run("UPDATE streams SET owner = ?, since_ms = ? WHERE device_id = ?", REVOKED_OWNER, now, device_id)
                == 0
            ):
                t.run(
                    "INSERT INTO streams (device_id, owner, since_ms) VALUES (?, ?, ?)", device_id, REVOKED_OWNER, now
                )
            t.notify(device_key(device_id))

    async def log(self, user_id: bytes, after: int, limit: int) -> tuple[list[bytes], int]:
        """Entries with seq above ``after`` (at most ``limit``) and the log's head (-1: none)."""

        def tx(t: Tx) -> tuple[list[bytes], int]:
            head = t.one("SELECT MAX(seq) FROM device_logs WHERE user_id = ?", user_id)
            rows = t.all("SELECT entry FROM device_logs WHERE user_id = ? AND seq > ? ORDER BY seq LIMIT ?",
                         user_id, after, limit)  # fmt: skip
            return [_bytes(row[0]) for row in rows], -1 if head is None or head[0] is None else _int(head[0])

        return await self._db.read(tx)

    async def active_devices(self, user_id: bytes) -> list[Device]:
        """The devices the user's log has active (none without a log)."""

        def tx(t: Tx) -> list[Device]:
            entries = _log_of(t, user_id)
            if not entries:
                return []
            active = {d.device_id.raw for d in _verified(entries).active()}
            rows = t.all("SELECT device_id, user_id, public_key, registered_at_ms FROM devices WHERE user_id = ?"
                         " AND revoked_at_ms IS NULL ORDER BY device_id", user_id)  # fmt: skip
            return [
                Device(_bytes(r[0]), _bytes(r[1]), _bytes(r[2]), _int(r[3])) for r in rows if _bytes(r[0]) in active
            ]

        return await self._db.read(tx)

    async def revoked(self, device_id: bytes) -> bool:
        def tx(t: Tx) -> bool:
            row = t.one("SELECT revoked_at_ms FROM devices WHERE device_id = ?", device_id)
            return row is not None and row[0] is not None

        return await self._db.query(tx)

    # -- links ------------------------------------------------------------------------------

    async def open_link(self, link_id: bytes, user_id: bytes, now: int) -> None:
        def tx(t: Tx) -> None:
            t.run("DELETE FROM links WHERE expires_at_ms < ?", now)
            row = t.one("SELECT user_id FROM links WHERE link_id = ?" + t.lock, link_id)
            if row is not None:
                if _bytes(row[0]) != user_id:
                    raise conflict("link_taken", "this link id is in use")
                return
            count = t.one("SELECT COUNT(*) FROM links WHERE user_id = ?", user_id)
            if count is not None and _int(count[0]) >= MAX_OPEN_LINKS:
                raise conflict("too_many_links", f"at most {MAX_OPEN_LINKS} links open at once; wait for one to end")
            t.run("INSERT INTO links (link_id, user_id, expires_at_ms) VALUES (?, ?, ?)", link_id, user_id,
                  now + LINK_TTL_MS)  # fmt: skip

        await self._db.write(tx)

    async def put_link(self, link_id: bytes, part: LinkPart, value: bytes, user_id: bytes | None, now: int) -> None:
        """Store the request (anyone, once) or the answer (the slot's user) of a live slot."""
        column = part.value

        def tx(t: Tx) -> None:
            row = t.one(f"SELECT user_id, {column}, expires_at_ms FROM links WHERE link_id = ?" + t.lock, link_id)
            if row is None or _int(row[2]) < now or (user_id is not None and _bytes(row[0]) != user_id):
                raise not_found("unknown_link", "no open link with this id: check the code, or make a new one")
            if row[1] is not None:
                if _bytes(row[1]) == value:
                    return
                raise conflict("link_taken", f"this link already has its {column}: make a new code")
            t.run(f"UPDATE links SET {column} = ? WHERE link_id = ?", value, link_id)

        await self._db.write(tx)

    async def get_link(self, link_id: bytes, part: LinkPart, user_id: bytes | None, now: int) -> bytes | None:
        column = part.value

        def tx(t: Tx) -> bytes | None:
            row = t.one(f"SELECT user_id, {column}, expires_at_ms FROM links WHERE link_id = ?", link_id)
            if row is None or _int(row[2]) < now or (user_id is not None and _bytes(row[0]) != user_id):
                raise not_found("unknown_link", "no open link with this id: check the code, or make a new one")
            return None if row[1] is None else _bytes(row[1])

        return await self._db.query(tx)


# -- routes -----------------------------------------------------------------------------------


async def read_log(request: Request) -> JSONResponse:
    relay = relay_of(request)
    limit_anonymous(request, relay)
    check_query(request, {"after", "limit"})
    user_id = wire.b64d(request.path_params["user_id"], "user_id", lo=1, hi=USER_ID_MAX)
    after = (
        wire.query_uint(request.query_params.get("after"), "after", default=0)
        if "after" in request.query_params
        else -1
    )
    limit = wire.query_uint(request.query_params.get("limit"), "limit", default=LOG_PAGE, lo=1, hi=LOG_PAGE)
    entries, head = await relay.identities.log(user_id, after, limit)
    body: dict[str, JsonValue] = {"user_id": wire.b64e(user_id), "entries": [wire.b64e(e) for e in entries],
                                  "head": None if head < 0 else head}  # fmt: skip
    return ok(body)


async def append_log(request: Request) -> JSONResponse:
    relay = relay_of(request)
    device = await authenticate(request, relay)
    user_id = wire.b64d(request.path_params["user_id"], "user_id", lo=1, hi=USER_ID_MAX)
    if user_id != device.user_id:
        raise forbidden("wrong_user", "a device appends only to its own user's device log")
    body = await json_body(request, relay, device.device_id, required=("entry",))
    entry = wire.sized(body["entry"], "entry", max_bytes=4096)
    appended = await relay.identities.append(device, entry, now_ms())
    if appended.op is LogOp.REVOKE and appended.device_id is not None:
        relay.tokens.drop_device(appended.device_id)
    return ok({"appended": appended.op is not None})


async def open_link(request: Request) -> JSONResponse:
    relay = relay_of(request)
    device = await authenticate(request, relay)
    body = await json_body(request, relay, device.device_id, required=("link_id",))
    link_id = wire.b64d(body["link_id"], "link_id", size=LINK_ID_SIZE)
    await relay.identities.open_link(link_id, device.user_id, now_ms())
    return ok({"link_id": wire.b64e(link_id), "expires_in_ms": LINK_TTL_MS})


async def _link_message(request: Request, part: LinkPart) -> JSONResponse:
    relay = relay_of(request)
    link_id = path_id(request, "link_id", LINK_ID_SIZE)
    owner = None
    column = part.value
    client: object
    if part is LinkPart.ANSWER:
        device = await authenticate(request, relay)
        owner, client = device.user_id, device.device_id
    else:
        limit_anonymous(request, relay)
        client = anonymous(request)
    body = await json_body(request, relay, client, required=(column,))
    value = wire.sized(body[column], column, max_bytes=MAX_LINK_MESSAGE)
    await relay.identities.put_link(link_id, part, value, owner, now_ms())
    return ok({"stored": True})


async def put_link_request(request: Request) -> JSONResponse:
    return await _link_message(request, LinkPart.REQUEST)


async def put_link_answer(request: Request) -> JSONResponse:
    return await _link_message(request, LinkPart.ANSWER)


async def get_link_request(request: Request) -> JSONResponse:
    relay = relay_of(request)
    device = await authenticate(request, relay)
    value = await relay.identities.get_link(path_id(request, "link_id", LINK_ID_SIZE), LinkPart.REQUEST,
                                            device.user_id, now_ms())  # fmt: skip
    return ok({"request": None if value is None else wire.b64e(value)})


async def get_link_answer(request: Request) -> JSONResponse:
    relay = relay_of(request)
    limit_anonymous(request, relay)
    value = await relay.identities.get_link(path_id(request, "link_id", LINK_ID_SIZE), LinkPart.ANSWER, None, now_ms())
    return ok({"answer": None if value is None else wire.b64e(value)})


IDENTITY_ROUTES = [
    Route("/v1/users/{user_id}/device-log", read_log, methods=["GET"]),
    Route("/v1/users/{user_id}/device-log", append_log, methods=["POST"]),
    Route("/v1/links", open_link, methods=["POST"]),
    Route("/v1/links/{link_id}/request", put_link_request, methods=["POST"]),
    Route("/v1/links/{link_id}/request", get_link_request, methods=["GET"]),
    Route("/v1/links/{link_id}/answer", put_link_answer, methods=["POST"]),
    Route("/v1/links/{link_id}/answer", get_link_answer, methods=["GET"]),
]

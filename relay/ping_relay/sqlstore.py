"""The storage logic, written once in SQL for both backends.

A backend (``backend_sqlite.py``, ``backend_postgres.py``) runs a synchronous function
inside one transaction on a worker thread and hands it a :class:`Tx`. Write
transactions are exclusive per group: on PostgreSQL the group's row is locked with
``SELECT ... FOR UPDATE`` (``Tx.lock``), on SQLite every write transaction is
``BEGIN IMMEDIATE`` (one writer at a time, across processes too). Read transactions see
one snapshot (SQLite: one read transaction; PostgreSQL: ``REPEATABLE READ``).

The per-group sequence number, the epoch, the roster, the Welcome mailbox and the log
entry of a commit change in one transaction; a reply is sent only after it committed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from ping_web.core.envelope import MessageEnvelope, MessageKind

from .errors import conflict, forbidden, gone, not_found
from .notify import device_key, group_key
from .storage import (
    Claimed,
    CommitRequest,
    Device,
    Entry,
    GroupInfo,
    KeyPackageCount,
    Member,
    Page,
    Posted,
    Welcome,
)

T = TypeVar("T")
Row = tuple[Any, ...]


class Tx(Protocol):
    """One open transaction. SQL uses ``?`` placeholders in both dialects."""

    @property
    def lock(self) -> str:
        """``" FOR UPDATE"`` on PostgreSQL; empty on SQLite (the transaction holds the write lock)."""
        ...

    @property
    def skip_locked(self) -> str:
        """``" FOR UPDATE SKIP LOCKED"`` on PostgreSQL; empty on SQLite."""
        ...

    def one(self, sql: str, *params: object) -> Row | None: ...

    def all(self, sql: str, *params: object) -> list[Row]: ...

    def run(self, sql: str, *params: object) -> int: ...

    def notify(self, key: str) -> None:
        """Wake ``key`` once this transaction has committed."""
        ...


class Backend(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def write(self, fn: Callable[[Tx], T]) -> T: ...

    async def read(self, fn: Callable[[Tx], T]) -> T: ...


def _bytes(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"expected bytes from the database, got {type(value).__name__}")


def _int(value: object) -> int:
    if isinstance(value, int):
        return value
    raise TypeError(f"expected an integer from the database, got {type(value).__name__}")


def _u64(value: int) -> bytes:
    """A sender seq (u64) as 8 big-endian bytes: it may not fit a signed 64-bit column."""
    return value.to_bytes(8, "big")


def _marks(count: int) -> str:
    return ", ".join("?" * count)


_DEVICE = "device_id, user_id, public_key, registered_at_ms"


def _device(row: Row) -> Device:
    return Device(_bytes(row[0]), _bytes(row[1]), _bytes(row[2]), _int(row[3]))


def _group(tx: Tx, group_id: bytes, *, lock: bool) -> tuple[int, int, int]:
    """``(epoch, head_seq, pruned_through)`` of a group; 404 if there is none."""
    sql = "SELECT epoch, head_seq, pruned_through FROM conversations WHERE group_id = ?"
    row = tx.one(sql + (tx.lock if lock else ""), group_id)
    if row is None:
        raise not_found("unknown_group", "no group with this id")
    return _int(row[0]), _int(row[1]), _int(row[2])


def _membership(tx: Tx, group_id: bytes, device_id: bytes) -> tuple[int, int | None] | None:
    row = tx.one("SELECT from_seq, removed_seq FROM members WHERE group_id = ? AND device_id = ?", group_id, device_id)
    if row is None:
        return None
    return _int(row[0]), None if row[1] is None else _int(row[1])


def _require_member(tx: Tx, group_id: bytes, device_id: bytes) -> None:
    membership = _membership(tx, group_id, device_id)
    if membership is None or membership[1] is not None:
        raise forbidden("not_member", "this device is not a member of the group")


def _duplicate(tx: Tx, group_id: bytes, envelope: MessageEnvelope) -> int | None:
    row = tx.one(
        "SELECT seq FROM log WHERE group_id = ? AND sender_device = ? AND sender_seq = ?",
        group_id,
        envelope.sender_device.raw,
        _u64(envelope.seq),
    )
    return None if row is None else _int(row[0])


def _append(tx: Tx, group_id: bytes, seq: int, envelope: MessageEnvelope, now_ms: int) -> None:
    tx.run(
        "INSERT INTO log (group_id, seq, kind, epoch, sender_device, sender_seq, envelope, received_at_ms)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        group_id,
        seq,
        int(envelope.kind),
        envelope.epoch,
        envelope.sender_device.raw,
        _u64(envelope.seq),
        envelope.encode(),
        now_ms,
    )


class SqlStore:
    """:class:`~ping_relay.storage.Store` over a :class:`Backend`."""

    def __init__(self, backend: Backend) -> None:
        self._db = backend

    async def start(self) -> None:
        await self._db.start()

    async def close(self) -> None:
        await self._db.close()

    # -- devices and auth ---------------------------------------------------------------

    async def register_device(self, device: Device) -> bool:
        def tx(t: Tx) -> bool:
            row = t.one("SELECT user_id, public_key FROM devices WHERE device_id = ?" + t.lock, device.device_id)
            if row is not None:
                if _bytes(row[0]) == device.user_id and _bytes(row[1]) == device.public_key:
                    return False
                raise conflict("device_conflict", "this device id is registered with another user or key")
            t.run(
                f"INSERT INTO devices ({_DEVICE}) VALUES (?, ?, ?, ?)",
                device.device_id,
                device.user_id,
                device.public_key,
                device.registered_at_ms,
            )
            return True

        return await self._db.write(tx)

    async def get_device(self, device_id: bytes) -> Device | None:
        def tx(t: Tx) -> Device | None:
            row = t.one(f"SELECT {_DEVICE} FROM devices WHERE device_id = ?", device_id)
            return None if row is None else _device(row)

        return await self._db.read(tx)

    async def devices_of(self, user_id: bytes) -> list[Device]:
        def tx(t: Tx) -> list[Device]:
            rows = t.all(f"SELECT {_DEVICE} FROM devices WHERE user_id = ? ORDER BY device_id", user_id)
            return [_device(row) for row in rows]

        return await self._db.read(tx)

    async def add_challenge(self, challenge: bytes, device_id: bytes, expires_at_ms: int, now_ms: int) -> None:
        def tx(t: Tx) -> None:
            t.run("DELETE FROM challenges WHERE expires_at_ms < ?", now_ms)
            t.run(
                "INSERT INTO challenges (challenge, device_id, expires_at_ms) VALUES (?, ?, ?)",
                challenge,
                device_id,
                expires_at_ms,
            )

        await self._db.write(tx)

    async def take_challenge(self, challenge: bytes) -> tuple[bytes, int] | None:
        def tx(t: Tx) -> tuple[bytes, int] | None:
            row = t.one("SELECT device_id, expires_at_ms FROM challenges WHERE challenge = ?" + t.lock, challenge)
            if row is None:
                return None
            t.run("DELETE FROM challenges WHERE challenge = ?", challenge)
            return _bytes(row[0]), _int(row[1])

        return await self._db.write(tx)

    async def add_token(self, token_hash: bytes, device_id: bytes, expires_at_ms: int, now_ms: int) -> None:
        def tx(t: Tx) -> None:
            t.run("DELETE FROM tokens WHERE expires_at_ms < ?", now_ms)
            t.run(
                "INSERT INTO tokens (token_hash, device_id, expires_at_ms) VALUES (?, ?, ?)",
                token_hash,
                device_id,
                expires_at_ms,
            )

        await self._db.write(tx)

    async def token_owner(self, token_hash: bytes) -> tuple[Device, int] | None:
        def tx(t: Tx) -> tuple[Device, int] | None:
            row = t.one(
                "SELECT d.device_id, d.user_id, d.public_key, d.registered_at_ms, t.expires_at_ms"
                " FROM tokens t JOIN devices d ON d.device_id = t.device_id WHERE t.token_hash = ?",
                token_hash,
            )
            return None if row is None else (_device(row), _int(row[4]))

        return await self._db.read(tx)

    # -- KeyPackages --------------------------------------------------------------------

    @staticmethod
    def _count(t: Tx, device_id: bytes) -> KeyPackageCount:
        available = t.one("SELECT COUNT(*) FROM key_packages WHERE device_id = ? AND last_resort = 0", device_id)
        last = t.one("SELECT COUNT(*) FROM key_packages WHERE device_id = ? AND last_resort = 1", device_id)
        claims = t.one("SELECT last_resort_claims FROM devices WHERE device_id = ?", device_id)
        return KeyPackageCount(
            _int(available[0]) if available else 0,
            bool(last and _int(last[0])),
            _int(claims[0]) if claims else 0,
        )

    async def publish_key_packages(
        self, device_id: bytes, key_packages: list[bytes], last_resort: bytes | None, max_stored: int, now_ms: int
    ) -> KeyPackageCount:
        def tx(t: Tx) -> KeyPackageCount:
            t.one("SELECT device_id FROM devices WHERE device_id = ?" + t.lock, device_id)
            fresh: list[tuple[bytes, bytes]] = []
            for data in key_packages:
                digest = hashlib.sha256(data).digest()
                seen = t.one("SELECT 1 FROM key_packages WHERE device_id = ? AND data_hash = ?", device_id, digest)
                if seen is None:
                    fresh.append((data, digest))
            stored = self._count(t, device_id).available
            if stored + len(fresh) > max_stored:
                raise conflict(
                    "too_many_key_packages",
                    f"a device keeps at most {max_stored} KeyPackages",
                    available=stored,
                    limit=max_stored,
                )
            for data, digest in fresh:
                t.run(
                    "INSERT INTO key_packages (device_id, data, data_hash, last_resort, published_at_ms)"
                    " VALUES (?, ?, ?, 0, ?)",
                    device_id,
                    data,
                    digest,
                    now_ms,
                )
            if last_resort is not None:
                digest = hashlib.sha256(last_resort).digest()
                row = t.one(
                    "SELECT last_resort FROM key_packages WHERE device_id = ? AND data_hash = ?", device_id, digest
                )
                if row is None:
                    t.run("DELETE FROM key_packages WHERE device_id = ? AND last_resort = 1", device_id)
                    t.run(
                        "INSERT INTO key_packages (device_id, data, data_hash, last_resort, published_at_ms)"
                        " VALUES (?, ?, ?, 1, ?)",
                        device_id,
                        last_resort,
                        digest,
                        now_ms,
                    )
                    t.run("UPDATE devices SET last_resort_claims = 0 WHERE device_id = ?", device_id)
                elif _int(row[0]) != 1:
                    raise conflict(
                        "duplicate_key_package", "the last-resort KeyPackage is already published as a regular one"
                    )
            return self._count(t, device_id)

        return await self._db.write(tx)

    async def count_key_packages(self, device_id: bytes) -> KeyPackageCount:
        return await self._db.read(lambda t: self._count(t, device_id))

    async def claim_key_package(self, device_id: bytes) -> Claimed | None:
        def tx(t: Tx) -> Claimed | None:
            if t.one("SELECT 1 FROM devices WHERE device_id = ?", device_id) is None:
                raise not_found("unknown_device", "no device with this id")
            row = t.one(
                "SELECT id, data FROM key_packages WHERE device_id = ? AND last_resort = 0 ORDER BY id LIMIT 1"
                + t.skip_locked,
                device_id,
            )
            if row is not None:
                if t.run("DELETE FROM key_packages WHERE id = ?", row[0]) != 1:
                    raise RuntimeError("a locked KeyPackage row vanished")
                return Claimed(_bytes(row[1]), last_resort=False)
            row = t.one("SELECT data FROM key_packages WHERE device_id = ? AND last_resort = 1", device_id)
            if row is None:
                return None
            t.run("UPDATE devices SET last_resort_claims = last_resort_claims + 1 WHERE device_id = ?", device_id)
            return Claimed(_bytes(row[0]), last_resort=True)

        return await self._db.write(tx)

    # -- groups and the log ---------------------------------------------------------------

    async def create_group(self, group_id: bytes, creator: bytes, now_ms: int) -> bool:
        def tx(t: Tx) -> bool:
            row = t.one("SELECT creator_device FROM conversations WHERE group_id = ?" + t.lock, group_id)
            if row is not None:
                if _bytes(row[0]) == creator:
                    return False
                raise conflict("group_exists", "a group with this id exists")
            t.run(
                "INSERT INTO conversations (group_id, creator_device, epoch, head_seq, pruned_through, created_at_ms)"
                " VALUES (?, ?, 0, 0, 0, ?)",
                group_id,
                creator,
                now_ms,
            )
            t.run("INSERT INTO members (group_id, device_id, from_seq) VALUES (?, ?, 1)", group_id, creator)
            return True

        return await self._db.write(tx)

    async def group_info(self, group_id: bytes, device_id: bytes) -> GroupInfo:
        def tx(t: Tx) -> GroupInfo:
            epoch, head, pruned = _group(t, group_id, lock=False)
            _require_member(t, group_id, device_id)
            creator = t.one("SELECT creator_device FROM conversations WHERE group_id = ?", group_id)
            rows = t.all(
                "SELECT device_id, from_seq, removed_seq FROM members WHERE group_id = ? ORDER BY device_id", group_id
            )
            members = [Member(_bytes(r[0]), _int(r[1]), None if r[2] is None else _int(r[2])) for r in rows]
            return GroupInfo(group_id, _bytes(creator[0]) if creator else b"", epoch, head, pruned, members)

        return await self._db.read(tx)

    async def post(self, envelope: MessageEnvelope, window: int, now_ms: int) -> Posted:
        group_id = envelope.conversation_id.raw

        def tx(t: Tx) -> Posted:
            epoch, head, _ = _group(t, group_id, lock=True)
            original = _duplicate(t, group_id, envelope)
            if original is not None:
                return Posted(original, duplicate=True, epoch=epoch)
            _require_member(t, group_id, envelope.sender_device.raw)
            if envelope.kind is MessageKind.APPLICATION:
                accepted = max(0, epoch - window) <= envelope.epoch <= epoch
            else:
                accepted = envelope.epoch == epoch
            if not accepted:
                raise conflict(
                    "wrong_epoch",
                    f"a {envelope.kind.name.lower()} envelope of epoch {envelope.epoch} is outside what the group"
                    f" accepts at epoch {epoch}",
                    epoch=epoch,
                    head=head,
                )
            seq = head + 1
            _append(t, group_id, seq, envelope, now_ms)
            t.run("UPDATE conversations SET head_seq = ? WHERE group_id = ?", seq, group_id)
            t.notify(group_key(group_id))
            return Posted(seq, duplicate=False, epoch=epoch)

        return await self._db.write(tx)

    async def commit(self, request: CommitRequest, now_ms: int) -> Posted:
        group_id = request.group_id
        commit = request.commit
        sender = commit.sender_device.raw

        def tx(t: Tx) -> Posted:
            epoch, head, _ = _group(t, group_id, lock=True)
            original = _duplicate(t, group_id, commit)
            if original is not None:
                return Posted(original, duplicate=True, epoch=epoch)
            _require_member(t, group_id, sender)
            if commit.epoch != epoch:
                raise conflict(
                    "stale_commit",
                    f"the group is at epoch {epoch}; this commit is from epoch {commit.epoch}",
                    epoch=epoch,
                    head=head,
                )
            if request.added:
                known = {
                    _bytes(row[0])
                    for row in t.all(
                        f"SELECT device_id FROM devices WHERE device_id IN ({_marks(len(request.added))})",
                        *request.added,
                    )
                }
                for device_id in request.added:
                    if device_id not in known:
                        raise conflict("unknown_device", "an added device is not registered", device_id=device_id.hex())
                    membership = _membership(t, group_id, device_id)
                    if membership is not None and membership[1] is None:
                        raise conflict("already_member", "an added device is a member", device_id=device_id.hex())
            for device_id in request.removed:
                membership = _membership(t, group_id, device_id)
                if membership is None or membership[1] is not None:
                    raise conflict("not_a_member", "a removed device is not a member", device_id=device_id.hex())
            seq = head + 1
            _append(t, group_id, seq, commit, now_ms)
            t.run("UPDATE conversations SET epoch = ?, head_seq = ? WHERE group_id = ?", epoch + 1, seq, group_id)
            for device_id in request.added:
                if _membership(t, group_id, device_id) is None:
                    t.run(
                        "INSERT INTO members (group_id, device_id, from_seq) VALUES (?, ?, ?)",
                        group_id,
                        device_id,
                        seq,
                    )
                else:
                    t.run(
                        "UPDATE members SET from_seq = ?, removed_seq = NULL WHERE group_id = ? AND device_id = ?",
                        seq,
                        group_id,
                        device_id,
                    )
            for device_id in request.removed:
                t.run(
                    "UPDATE members SET removed_seq = ? WHERE group_id = ? AND device_id = ?", seq, group_id, device_id
                )
            t.run(
                "INSERT INTO roster_changes (group_id, seq, added, removed, signature) VALUES (?, ?, ?, ?, ?)",
                group_id,
                seq,
                b"".join(sorted(request.added)),
                b"".join(sorted(request.removed)),
                request.signature,
            )
            if request.welcome is not None:
                t.run(
                    "INSERT INTO welcomes (group_id, commit_seq, envelope) VALUES (?, ?, ?)",
                    group_id,
                    seq,
                    request.welcome,
                )
                for device_id in request.added:
                    t.run(
                        "INSERT INTO mailbox (device_id, group_id, commit_seq, created_at_ms) VALUES (?, ?, ?, ?)",
                        device_id,
                        group_id,
                        seq,
                        now_ms,
                    )
                    t.notify(device_key(device_id))
            t.notify(group_key(group_id))
            return Posted(seq, duplicate=False, epoch=epoch + 1)

        return await self._db.write(tx)

    async def read(self, group_id: bytes, device_id: bytes, after: int, limit: int, max_bytes: int) -> Page:
        def tx(t: Tx) -> Page:
            epoch, head, pruned = _group(t, group_id, lock=False)
            membership = _membership(t, group_id, device_id)
            if membership is None:
                raise forbidden("not_member", "this device is not a member of the group")
            from_seq, removed = membership
            visible = head if removed is None else removed
            if after > visible:
                raise conflict("cursor_ahead", f"the log ends at {visible}", head=visible)
            start = max(after, from_seq - 1)
            if start < pruned:
                raise gone("cursor_expired", f"entries up to {pruned} were pruned", pruned_through=pruned, head=visible)
            rows = t.all(
                "SELECT seq, envelope FROM log WHERE group_id = ? AND seq > ? AND seq <= ? ORDER BY seq LIMIT ?",
                group_id,
                start,
                visible,
                limit,
            )
            entries: list[Entry] = []
            size = 0
            for row in rows:
                data = _bytes(row[1])
                if entries and size + len(data) > max_bytes:
                    break
                entries.append(Entry(_int(row[0]), data))
                size += len(data)
            last = entries[-1].seq if entries else start
            return Page(entries, visible, None if removed is not None else epoch, removed, last < visible)

        return await self._db.read(tx)

    # -- Welcome mailbox ------------------------------------------------------------------

    async def welcomes(self, device_id: bytes, after_id: int, limit: int) -> list[Welcome]:
        def tx(t: Tx) -> list[Welcome]:
            rows = t.all(
                "SELECT m.id, m.group_id, m.commit_seq, w.envelope FROM mailbox m"
                " JOIN welcomes w ON w.group_id = m.group_id AND w.commit_seq = m.commit_seq"
                " WHERE m.device_id = ? AND m.id > ? ORDER BY m.id LIMIT ?",
                device_id,
                after_id,
                limit,
            )
            return [Welcome(_int(r[0]), _bytes(r[1]), _int(r[2]), _bytes(r[3])) for r in rows]

        return await self._db.read(tx)

    async def ack_welcomes(self, device_id: bytes, ids: list[int]) -> int:
        def tx(t: Tx) -> int:
            if not ids:
                return 0
            where = f"device_id = ? AND id IN ({_marks(len(ids))})"
            rows = t.all(f"SELECT group_id, commit_seq FROM mailbox WHERE {where}", device_id, *ids)
            if not rows:
                return 0
            t.run(f"DELETE FROM mailbox WHERE {where}", device_id, *ids)
            t.notify(device_key(device_id))  # the stream sends at most a page: room for the next ones
            for group_id, commit_seq in {(_bytes(r[0]), _int(r[1])) for r in rows}:
                t.run(
                    "DELETE FROM welcomes WHERE group_id = ? AND commit_seq = ? AND NOT EXISTS"
                    " (SELECT 1 FROM mailbox WHERE group_id = ? AND commit_seq = ?)",
                    group_id,
                    commit_seq,
                    group_id,
                    commit_seq,
                )
            return len(rows)

        return await self._db.write(tx)

    # -- retention ------------------------------------------------------------------------

    async def prune(self, cutoff_ms: int) -> int:
        def tx(t: Tx) -> int:
            deleted = 0
            for row in t.all(
                "SELECT group_id, MAX(seq) FROM log WHERE received_at_ms < ? GROUP BY group_id", cutoff_ms
            ):
                group_id, through = _bytes(row[0]), _int(row[1])
                _group(t, group_id, lock=True)
                t.run(
                    "UPDATE conversations SET pruned_through = ? WHERE group_id = ? AND pruned_through < ?",
                    through,
                    group_id,
                    through,
                )
                deleted += t.run("DELETE FROM log WHERE group_id = ? AND seq <= ?", group_id, through)
            return deleted

        return await self._db.write(tx)

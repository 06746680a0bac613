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

import asyncio
import functools
import hashlib
import math
from collections.abc import Callable, Sequence
from typing import Any, Final, Protocol, TypeVar

from ping_web.core.envelope import MessageEnvelope, MessageKind

from .config import Limits
from .errors import (
    ClaimScope,
    QuotaScope,
    RelayError,
    claims_limited,
    conflict,
    forbidden,
    gone,
    mailbox_full,
    not_found,
    quota_exceeded,
    rate_limited,
)
from .notify import device_key, group_key
from .storage import (
    Claimed,
    CommitRequest,
    Device,
    Entry,
    GroupInfo,
    KeyPackageCount,
    LogEntry,
    LogPage,
    Member,
    Page,
    Posted,
    Recheck,
    Welcome,
    WelcomePage,
)

T = TypeVar("T")
Row = tuple[Any, ...]


class Tx(Protocol):
    """One open transaction. SQL uses ``?`` placeholders in both dialects."""

    @property
    def dialect(self) -> str:
        """``"postgres"`` or ``"sqlite"``."""
        ...

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

    def send(self, sql: str, *params: object) -> None:
        """Run a statement whose result is not needed (PostgreSQL pipelines it with the commit)."""
        ...

    def many(self, sql: str, rows: Sequence[Sequence[object]]) -> None:
        """Run one statement once per row of parameters."""
        ...

    def notify(self, key: str) -> None:
        """Wake ``key`` once this transaction has committed."""
        ...

    def notified(self, key: str) -> str:
        """The statement about to run sends the notification of ``key`` itself (PostgreSQL:
        ``pg_notify`` inside it, with the returned payload); the backend only wakes this
        process. Returns the payload to send."""
        ...


class Backend(Protocol):
    @property
    def dialect(self) -> str: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def write(self, fn: Callable[[Tx], T]) -> T: ...

    async def read(self, fn: Callable[[Tx], T]) -> T: ...

    async def query(self, fn: Callable[[Tx], T]) -> T:
        """Like :meth:`read` for a function that runs one statement (its own snapshot)."""
        ...

    async def write_each(self, fns: Sequence[Callable[[Tx], T]]) -> list[T | Exception]:
        """Run each function in its own savepoint of one write transaction (PostgreSQL); a
        refusal or a conflict is returned in that function's place."""
        ...


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


def _user_is_member(tx: Tx, group_id: bytes, device_id: bytes) -> bool:
    """Whether ``device_id`` is active (not revoked) and a device of its user is a current
    member of the group: who may join it by external commit."""
    row = tx.one(
        "SELECT 1 FROM devices d JOIN devices other ON other.user_id = d.user_id"
        " JOIN members m ON m.device_id = other.device_id"
        " WHERE d.device_id = ? AND d.revoked_at_ms IS NULL AND m.group_id = ? AND m.removed_seq IS NULL",
        device_id, group_id,
    )  # fmt: skip
    return row is not None


def _require_member(tx: Tx, group_id: bytes, device_id: bytes) -> None:
    membership = _membership(tx, group_id, device_id)
    if membership is None or membership[1] is not None:
        raise forbidden("not_member", "this device is not a member of the group")


def _lock_user(tx: Tx, user_id: bytes) -> None:
    """Serialize registrations under one user id until the transaction ends (PostgreSQL: an
    advisory lock on a hash of it; SQLite's write transactions are serialized already), so
    the per-user cap holds with concurrent registrations on several processes."""
    if tx.dialect == "postgres":
        key = int.from_bytes(hashlib.sha256(b"ping-relay/user\x00" + user_id).digest()[:8], "big", signed=True)
        tx.one("SELECT pg_advisory_xact_lock(?)", key)


def _chunks(items: Sequence[T], size: int = 500) -> list[Sequence[T]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _lock_devices(tx: Tx, device_ids: list[bytes]) -> dict[bytes, int]:
    """The log bytes each of these devices sent, for those registered; their rows locked
    (PostgreSQL), in id order, until the transaction ends."""
    found: dict[bytes, int] = {}
    for part in _chunks(sorted(set(device_ids))):
        for row in tx.all(
            f"SELECT device_id, stored_bytes FROM devices WHERE device_id IN ({_marks(len(part))})"
            f" ORDER BY device_id{tx.lock}",
            *part,
        ):
            found[_bytes(row[0])] = _int(row[1])
    return found


def _check_mailboxes(tx: Tx, limits: Limits, device_ids: list[bytes], welcome_bytes: int) -> None:
    """409 ``mailbox_full`` if one more Welcome of ``welcome_bytes`` would take a device's
    mailbox past ``max_mailbox_welcomes`` or ``max_mailbox_bytes`` (the rows of the devices
    are locked by the caller, so two commits cannot both take the last place)."""
    held: dict[bytes, tuple[int, int]] = {}
    for part in _chunks(device_ids):
        for row in tx.all(
            f"SELECT device_id, COUNT(*), CAST(SUM(bytes) AS BIGINT) FROM mailbox WHERE device_id IN ({_marks(len(part))})"
            " GROUP BY device_id",
            *part,
        ):
            held[_bytes(row[0])] = (_int(row[1]), _int(row[2] or 0))
    for device_id in sorted(device_ids):
        count, size = held.get(device_id, (0, 0))
        if count + 1 > limits.max_mailbox_welcomes or size + welcome_bytes > limits.max_mailbox_bytes:
            raise mailbox_full(device_id, count, size)


_POST_STATE = (
    "SELECT c.epoch, c.head_seq,"
    " (SELECT seq FROM log WHERE group_id = c.group_id AND sender_device = ? AND sender_seq = ?) AS original,"
    " (SELECT CASE WHEN removed_seq IS NULL THEN 1 ELSE 0 END FROM members"
    "  WHERE group_id = c.group_id AND device_id = ?) AS member,"
    " c.stored_bytes AS group_bytes, d.stored_bytes AS device_bytes"
    " FROM conversations c JOIN devices d ON d.device_id = ? WHERE c.group_id = ?"
)
"""A group's epoch and head, the seq of the post if it is already in the log, whether the
sender is a current member (1), a removed one (0) or never was (NULL), and the log bytes
the group and the sender hold: one round trip (PostgreSQL: both rows locked)."""


def _post_state_params(envelope: MessageEnvelope) -> list[object]:
    sender = envelope.sender_device.raw
    return [sender, _u64(envelope.seq), sender, sender, envelope.conversation_id.raw]


def _check_quota(limits: Limits, group_bytes: int, device_bytes: int, size: int) -> None:
    """409 ``quota_exceeded`` if ``size`` more log bytes would take the sender's or the
    group's total past its quota."""
    if device_bytes + size > limits.max_device_bytes:
        raise quota_exceeded(QuotaScope.DEVICE, limits.max_device_bytes)
    if group_bytes + size > limits.max_group_bytes:
        raise quota_exceeded(QuotaScope.GROUP, limits.max_group_bytes)


_I63 = (1 << 63) - 1


@functools.lru_cache(maxsize=2)
def _post_statement_sql(limited: bool) -> str:
    """The post as one PostgreSQL statement (``SqlStore._post_statement``). Returns one row:
    epoch, head before the post, the seq of an earlier copy, membership (1 current), and
    whether the entry was stored; no row for an unknown group. The quotas are checked on the
    locked rows, and both byte counts move with the insert."""
    refill = "LEAST(?, rate_buckets.tokens + GREATEST(0, ? - rate_buckets.updated_ms) * ?)"
    bucket = (
        "INSERT INTO rate_buckets (device_id, tokens, updated_ms) SELECT ?, ?, ? FROM ok ON CONFLICT (device_id)"
        f" DO UPDATE SET tokens = {refill} - 1, updated_ms = GREATEST(rate_buckets.updated_ms, ?)"
        f" WHERE {refill} >= 1 RETURNING 1"
        if limited
        else "SELECT 1 FROM ok"
    )
    return (
        f"WITH s AS ({_POST_STATE} FOR UPDATE),"
        " ok AS (SELECT s.* FROM s WHERE s.original IS NULL AND s.member = 1 AND CASE WHEN ? = 1"
        " THEN ? BETWEEN GREATEST(0, s.epoch - ?) AND s.epoch ELSE ? = s.epoch END"
        " AND s.device_bytes + ? <= ? AND s.group_bytes + ? <= ?),"
        f" b AS ({bucket}),"
        " l AS (INSERT INTO log (group_id, seq, kind, epoch, sender_device, sender_seq, envelope, received_at_ms)"
        " SELECT ?, ok.head_seq + 1, ?, ?, ?, ?, ?, ? FROM ok, b RETURNING seq),"
        " u AS (UPDATE conversations SET head_seq = l.seq, stored_bytes = stored_bytes + ? FROM l"
        " WHERE conversations.group_id = ? RETURNING 1),"
        " dv AS (UPDATE devices SET stored_bytes = stored_bytes + ? FROM l WHERE devices.device_id = ? RETURNING 1),"
        " n AS (SELECT pg_notify('ping_relay', ?) FROM u)"
        " SELECT s.epoch, s.head_seq, s.original, s.member, (SELECT COUNT(*) FROM n) FROM s"
    )


def _duplicate(tx: Tx, group_id: bytes, envelope: MessageEnvelope) -> int | None:
    """The seq of the entry with the envelope's dedupe key ``(sender_device, seq)``, if any
    (409 ``seq_reused`` if its bytes differ: see :func:`_same_bytes`)."""
    row = tx.one(
        "SELECT seq FROM log WHERE group_id = ? AND sender_device = ? AND sender_seq = ?",
        group_id,
        envelope.sender_device.raw,
        _u64(envelope.seq),
    )
    if row is None:
        return None
    _same_bytes(tx, group_id, _int(row[0]), envelope)
    return _int(row[0])


def _same_bytes(tx: Tx, group_id: bytes, seq: int, envelope: MessageEnvelope) -> None:
    """Only the identical bytes are a duplicate: another envelope under the same dedupe key
    is refused (a client that reuses its seqs, or a commit posing as a retried message)."""
    row = tx.one("SELECT envelope FROM log WHERE group_id = ? AND seq = ?", group_id, seq)
    if row is not None and _bytes(row[0]) != envelope.encode():
        raise conflict(
            "seq_reused",
            "this device already posted another envelope with this seq to this group; seqs are never reused",
        )


def _epoch_for(member: object, epoch: int) -> int | None:
    """The group's epoch as a reply may show it: to a current member (1) only."""
    return epoch if member == 1 else None


def _append(tx: Tx, group_id: bytes, seq: int, envelope: MessageEnvelope, data: bytes, now_ms: int) -> None:
    """Store ``envelope`` (encoded: ``data``) at ``seq`` and count its bytes for its sender
    (the caller updates the group's row: its head, and its ``stored_bytes``)."""
    tx.send(
        "UPDATE devices SET stored_bytes = stored_bytes + ? WHERE device_id = ?", len(data), envelope.sender_device.raw
    )
    tx.send(
        "INSERT INTO log (group_id, seq, kind, epoch, sender_device, sender_seq, envelope, received_at_ms)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        group_id,
        seq,
        int(envelope.kind),
        envelope.epoch,
        envelope.sender_device.raw,
        _u64(envelope.seq),
        data,
        now_ms,
    )


def _bounded(source: str) -> str:
    """SQL: the rows of ``source`` (``seq`` and ``len`` columns, in seq order, limited) with
    ``keep`` 1 while their running byte total stays within the bound given as the first
    parameter, and always for the first row: a page cut by bytes in the database, so a read
    never loads more envelope bytes than its page holds."""
    return (
        "SELECT x.seq, CASE WHEN SUM(x.len) OVER (ORDER BY x.seq) <= ? OR ROW_NUMBER() OVER (ORDER BY x.seq) = 1"
        f" THEN 1 ELSE 0 END AS keep FROM ({source}) x"
    )


_LOG_AFTER = (
    "SELECT seq, LENGTH(envelope) AS len FROM log WHERE group_id = {group} AND seq > {after} ORDER BY seq LIMIT ?"
)

_LOG_PAGES = (
    "SELECT w.g, c.head_seq, c.pruned_through, k.seq, l.envelope, r.removed"
    " FROM unnest(?::bytea[], ?::bigint[]) AS w(g, after)"
    " JOIN conversations c ON c.group_id = w.g"
    f" LEFT JOIN LATERAL ({_bounded(_LOG_AFTER.format(group='w.g', after='w.after'))}) k ON true"
    " LEFT JOIN log l ON l.group_id = w.g AND l.seq = k.seq AND k.keep = 1"
    " LEFT JOIN roster_changes r ON r.group_id = w.g AND r.seq = k.seq ORDER BY w.g, k.seq"
)
"""PostgreSQL: the log of many groups after their cursors, in one statement."""

_LOG_PAGE = (
    f"SELECT k.seq, l.envelope, r.removed FROM ({_bounded(_LOG_AFTER.format(group='?', after='?'))}) k"
    " LEFT JOIN log l ON l.group_id = ? AND l.seq = k.seq AND k.keep = 1"
    " LEFT JOIN roster_changes r ON r.group_id = ? AND r.seq = k.seq ORDER BY k.seq"
)
"""One group's log after a cursor (SQLite's fan-out reads)."""


_READ = (
    "SELECT k.seq, l.envelope FROM ("
    + _bounded(
        "SELECT seq, LENGTH(envelope) AS len FROM log WHERE group_id = ? AND seq > ? AND seq <= ? ORDER BY seq LIMIT ?"
    )
    + ") k LEFT JOIN log l ON l.group_id = ? AND l.seq = k.seq AND k.keep = 1 ORDER BY k.seq"
)
"""What a device may read of a group's log, between a cursor and its visible head."""


def _page(head: int, pruned: int, rows: list[Row], limit: int) -> LogPage:
    """``rows`` of ``(seq, envelope, removed)``, the envelope ``NULL`` past the page's bytes."""
    entries: list[LogEntry] = []
    cut = False
    for row in rows:
        if row[1] is None:
            cut = True
            break
        entries.append(LogEntry(_int(row[0]), _bytes(row[1]), b"" if row[2] is None else _bytes(row[2])))
    return LogPage(entries, head, pruned, more=cut or len(rows) >= limit)


def _log_page(t: Tx, group_id: bytes, after: int, limit: int, max_bytes: int) -> LogPage:
    """One group's log after ``after`` with its head, in one read transaction."""
    row = t.one("SELECT head_seq, pruned_through FROM conversations WHERE group_id = ?", group_id)
    if row is None:
        return LogPage([], 0, 0, more=False)
    rows = t.all(_LOG_PAGE, max_bytes, group_id, after, limit, group_id, group_id)
    return _page(_int(row[0]), _int(row[1]), rows, limit)


_CLAIM_KEY_PREFIX: Final = {
    ClaimScope.PAIR: b"kp-pair/",
    ClaimScope.TARGET: b"kp-target/",
    ClaimScope.LAST_RESORT: b"kp-last/",
}
"""Bucket keys of KeyPackage claims in ``rate_buckets`` (beside the 16-byte device ids):
the prefix, then the claimer's and the target's device id (pair) or the target's."""
_GROUP_KEY_PREFIX: Final = b"groups/"
"""Bucket key of a device's group registrations: the prefix, then its device id."""


class SqlStore:
    """:class:`~ping_relay.storage.Store` over a :class:`Backend`, enforcing ``limits``.

    Rates held in the database are token buckets, a row each in ``rate_buckets`` spent in
    the transaction of the write they limit (so they hold across every relay process on
    the database): each device's writes (``rate_per_second``, ``rate_burst``: every write
    that stores something spends one token), and the claims of each device's KeyPackages
    per claimer, by all claimers, and of its last-resort one (``ClaimScope``).
    """

    def __init__(self, backend: Backend, limits: Limits | None = None) -> None:
        self._db = backend
        self._limits = limits or Limits()
        self._rate = self._limits.rate_per_second
        self._burst = float(self._limits.rate_burst)
        self._post_queues: dict[bytes, list[tuple[Callable[[Tx], Posted | None], asyncio.Future[Posted | None]]]] = {}
        self._post_writers: dict[bytes, asyncio.Task[None]] = {}

    @staticmethod
    def _spend(t: Tx, key: bytes, now_ms: int, rate: float, burst: float) -> int | None:
        """Spend one token of the bucket ``key``: ``None``, or the seconds until one is back
        (nothing spent). A bucket without a row is full."""
        if rate <= 0:
            return None
        per_ms = rate / 1000.0
        most, least = ("GREATEST", "LEAST") if t.dialect == "postgres" else ("MAX", "MIN")
        refill = f"{least}(?, rate_buckets.tokens + {most}(0, ? - rate_buckets.updated_ms) * ?)"
        row = t.one(
            "INSERT INTO rate_buckets (device_id, tokens, updated_ms) VALUES (?, ?, ?) ON CONFLICT (device_id)"
            f" DO UPDATE SET tokens = {refill} - 1, updated_ms = {most}(rate_buckets.updated_ms, ?)"
            f" WHERE {refill} >= 1 RETURNING tokens",
            key,
            burst - 1.0,
            now_ms,
            burst,
            now_ms,
            per_ms,
            now_ms,
            burst,
            now_ms,
            per_ms,
        )
        if row is not None:
            return None
        state = t.one("SELECT tokens, updated_ms FROM rate_buckets WHERE device_id = ?", key)
        tokens = 0.0
        if state is not None:
            tokens = min(burst, float(state[0]) + max(0, now_ms - _int(state[1])) * per_ms)
        return max(1, math.ceil((1.0 - tokens) / rate))

    def _charge(self, t: Tx, device_id: bytes, now_ms: int) -> None:
        """Spend one token of the device's write bucket, or refuse with 429 (rolling back)."""
        retry = self._spend(t, device_id, now_ms, self._rate, self._burst)
        if retry is not None:
            raise rate_limited(retry)

    def _limit_claim(self, t: Tx, scope: ClaimScope, key: bytes, now_ms: int) -> None:
        """Spend one token of a KeyPackage claim bucket, or refuse with 429 ``claims_limited``."""
        lim = self._limits
        rate, burst = {
            ClaimScope.PAIR: (lim.claim_rate_per_pair, lim.claim_burst_per_pair),
            ClaimScope.TARGET: (lim.claim_rate_per_target, lim.claim_burst_per_target),
            ClaimScope.LAST_RESORT: (lim.last_resort_rate, lim.last_resort_burst),
        }[scope]
        retry = self._spend(t, _CLAIM_KEY_PREFIX[scope] + key, now_ms, rate, float(burst))
        if retry is not None:
            raise claims_limited(scope, retry)

    def _bucket_idle_ms(self) -> int:
        """After this long without a spend, every bucket is full again."""
        lim = self._limits
        pairs = [
            (lim.rate_per_second, lim.rate_burst),
            (lim.claim_rate_per_pair, lim.claim_burst_per_pair),
            (lim.claim_rate_per_target, lim.claim_burst_per_target),
            (lim.last_resort_rate, lim.last_resort_burst),
            (lim.group_rate_per_second, lim.group_burst),
        ]
        return math.ceil(max((burst / rate for rate, burst in pairs if rate > 0), default=0.0) * 1000)

    @property
    def backend(self) -> Backend:
        """The database this store runs on (the identity store shares it)."""
        return self._db

    async def start(self) -> None:
        await self._db.start()

    async def close(self) -> None:
        await self._db.close()

    # -- devices and auth ---------------------------------------------------------------

    async def get_device(self, device_id: bytes) -> Device | None:
        def tx(t: Tx) -> Device | None:
            row = t.one(f"SELECT {_DEVICE} FROM devices WHERE device_id = ?", device_id)
            return None if row is None else _device(row)

        return await self._db.query(tx)

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
                " FROM tokens t JOIN devices d ON d.device_id = t.device_id WHERE t.token_hash = ?"
                " AND d.revoked_at_ms IS NULL",
                token_hash,
            )
            return None if row is None else (_device(row), _int(row[4]))

        return await self._db.query(tx)

    # -- KeyPackages --------------------------------------------------------------------

    @staticmethod
    def _count(t: Tx, device_id: bytes) -> KeyPackageCount:
        available = t.one("SELECT COUNT(*) FROM key_packages WHERE device_id = ? AND last_resort = 0", device_id)
        last = t.one("SELECT COUNT(*) FROM key_packages WHERE device_id = ? AND last_resort = 1", device_id)
        claims = t.one("SELECT last_resort_claims, key_packages_claimed FROM devices WHERE device_id = ?", device_id)
        return KeyPackageCount(
            _int(available[0]) if available else 0,
            bool(last and _int(last[0])),
            _int(claims[0]) if claims else 0,
            _int(claims[1]) if claims else 0,
        )

    async def publish_key_packages(
        self, device_id: bytes, key_packages: list[bytes], last_resort: bytes | None, max_stored: int, now_ms: int
    ) -> KeyPackageCount:
        def tx(t: Tx) -> KeyPackageCount:
            t.one("SELECT device_id FROM devices WHERE device_id = ?" + t.lock, device_id)
            self._charge(t, device_id, now_ms)
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

    async def claim_key_package(self, device_id: bytes, claimer: bytes, now_ms: int) -> Claimed:
        low = self._limits.key_packages_low

        def tx(t: Tx) -> Claimed:
            if t.one("SELECT 1 FROM devices WHERE device_id = ?", device_id) is None:
                raise not_found("unknown_device", "no device with this id")
            self._charge(t, claimer, now_ms)
            self._limit_claim(t, ClaimScope.PAIR, claimer + device_id, now_ms)
            self._limit_claim(t, ClaimScope.TARGET, device_id, now_ms)
            row = t.one(
                "SELECT id, data FROM key_packages WHERE device_id = ? AND last_resort = 0 ORDER BY id LIMIT 1"
                + t.skip_locked,
                device_id,
            )
            if row is not None:
                if t.run("DELETE FROM key_packages WHERE id = ?", row[0]) != 1:
                    raise RuntimeError("a locked KeyPackage row vanished")
                t.send(
                    "UPDATE devices SET key_packages_claimed = key_packages_claimed + 1 WHERE device_id = ?", device_id
                )
                left = t.one("SELECT COUNT(*) FROM key_packages WHERE device_id = ? AND last_resort = 0", device_id)
                if left is not None and _int(left[0]) < low:
                    t.notify(device_key(device_id))  # the owner's stream says its stock runs low
                return Claimed(_bytes(row[1]), last_resort=False)
            row = t.one("SELECT data FROM key_packages WHERE device_id = ? AND last_resort = 1", device_id)
            if row is None:
                raise not_found("no_key_package", "this device has no KeyPackage left")
            self._limit_claim(t, ClaimScope.LAST_RESORT, device_id, now_ms)
            t.run("UPDATE devices SET last_resort_claims = last_resort_claims + 1 WHERE device_id = ?", device_id)
            t.notify(device_key(device_id))
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
            self._charge(t, creator, now_ms)
            retry = self._spend(
                t, _GROUP_KEY_PREFIX + creator, now_ms, self._limits.group_rate_per_second, self._limits.group_burst
            )
            if retry is not None:
                raise rate_limited(retry)
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
        sender = envelope.sender_device.raw

        data = envelope.encode()

        def tx(t: Tx) -> Posted:
            row = t.one(_POST_STATE + t.lock, *_post_state_params(envelope))
            if row is None:
                raise not_found("unknown_group", "no group with this id")
            epoch, head = _int(row[0]), _int(row[1])
            if row[2] is not None:
                _same_bytes(t, group_id, _int(row[2]), envelope)
                return Posted(_int(row[2]), duplicate=True, epoch=_epoch_for(row[3], epoch))
            if row[3] != 1:
                raise forbidden("not_member", "this device is not a member of the group")
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
            _check_quota(self._limits, _int(row[4]), _int(row[5]), len(data))
            self._charge(t, sender, now_ms)
            seq = head + 1
            _append(t, group_id, seq, envelope, data, now_ms)
            t.send(
                "UPDATE conversations SET head_seq = ?, stored_bytes = stored_bytes + ? WHERE group_id = ?",
                seq,
                len(data),
                group_id,
            )
            t.notify(group_key(group_id))
            return Posted(seq, duplicate=False, epoch=epoch)

        if self._db.dialect == "postgres" and envelope.epoch <= _I63:
            return await self._post_queued(envelope, window, now_ms, tx)
        return await self._db.write(tx)

    async def _post_queued(
        self, envelope: MessageEnvelope, window: int, now_ms: int, fallback: Callable[[Tx], Posted]
    ) -> Posted:
        """PostgreSQL: posts to one group wait for the group's previous write, then go
        together: alone as one statement, or several, each in its own savepoint, in one
        transaction (one WAL flush for all). A group's row is locked through its commit's
        flush, so this is what lets a busy group take more than one post per flush."""
        group_id = envelope.conversation_id.raw
        future: asyncio.Future[Posted | None] = asyncio.get_running_loop().create_future()
        self._post_queues.setdefault(group_id, []).append((self._post_statement(envelope, window, now_ms), future))
        if group_id not in self._post_writers:
            self._post_writers[group_id] = asyncio.create_task(self._write_posts(group_id))
        posted = await future
        if posted is None:  # refused (epoch window, rate) or a conflict: the transaction says why, or retries
            return await self._db.write(fallback)
        return posted

    async def _write_posts(self, group_id: bytes) -> None:
        try:
            while batch := self._post_queues.pop(group_id, None):
                fns = [fn for fn, _ in batch]
                results: list[Posted | Exception | None]
                try:
                    alone = len(fns) == 1
                    results = [await self._db.query(fns[0])] if alone else list(await self._db.write_each(fns))
                except Exception as exc:  # noqa: BLE001 - every post of the batch gets the error
                    results = [exc] * len(batch)
                for (_, future), result in zip(batch, results, strict=True):
                    if future.done():
                        continue
                    if isinstance(result, RelayError) or (isinstance(result, Exception) and len(batch) == 1):
                        future.set_exception(result)
                    elif isinstance(result, Exception):
                        future.set_result(None)
                    else:
                        future.set_result(result)
        finally:
            self._post_writers.pop(group_id, None)

    def _post_statement(self, envelope: MessageEnvelope, window: int, now_ms: int) -> Callable[[Tx], Posted | None]:
        """The post as one PostgreSQL statement: lock the group's and the sender's rows, check
        dedupe, membership, epoch and quotas, spend a write token, append, move the head and
        the byte counts, notify. The same rules as the transaction in :meth:`post`; ``None``
        when the epoch window, a quota or the rate refused it (the transaction then says why)."""
        group_id = envelope.conversation_id.raw
        sender = envelope.sender_device.raw
        application = 1 if envelope.kind is MessageKind.APPLICATION else 0

        def statement(t: Tx) -> Posted | None:
            payload = t.notified(group_key(group_id))
            limited = self._rate > 0
            data = envelope.encode()
            lim = self._limits
            params = _post_state_params(envelope)
            params += [application, envelope.epoch, window, envelope.epoch]
            params += [len(data), lim.max_device_bytes, len(data), lim.max_group_bytes]
            if limited:
                per_ms = self._rate / 1000.0
                params += [sender, self._burst - 1.0, now_ms]
                params += [self._burst, now_ms, per_ms, now_ms, self._burst, now_ms, per_ms]
            params += [group_id, int(envelope.kind), envelope.epoch, sender, _u64(envelope.seq), data]
            params += [now_ms, len(data), group_id, len(data), sender, payload]
            row = t.one(_post_statement_sql(limited), *params)
            if row is None:
                raise not_found("unknown_group", "no group with this id")
            epoch, head, original, member, stored = _int(row[0]), _int(row[1]), row[2], row[3], row[4]
            if original is not None:
                _same_bytes(t, group_id, _int(original), envelope)
                return Posted(_int(original), duplicate=True, epoch=_epoch_for(member, epoch))
            if member != 1:
                raise forbidden("not_member", "this device is not a member of the group")
            if not stored:
                return None
            return Posted(head + 1, duplicate=False, epoch=epoch)

        return statement

    async def commit(self, request: CommitRequest, now_ms: int) -> Posted:
        group_id = request.group_id
        commit = request.commit
        sender = commit.sender_device.raw
        data = commit.encode()
        lim = self._limits

        def tx(t: Tx) -> Posted:
            epoch, head, _ = _group(t, group_id, lock=True)
            original = _duplicate(t, group_id, commit)
            membership = _membership(t, group_id, sender)
            current = membership is not None and membership[1] is None
            if original is not None:
                return Posted(original, duplicate=True, epoch=epoch if current else None)
            joins = not current and request.external and _user_is_member(t, group_id, sender)
            if not current and not joins:
                raise forbidden("not_member", "this device is not a member of the group")
            if commit.epoch != epoch:
                raise conflict(
                    "stale_commit",
                    f"the group is at epoch {epoch}; this commit is from epoch {commit.epoch}",
                    epoch=epoch,
                    head=head,
                )
            stored = _lock_devices(t, [sender, *request.added])
            for device_id in request.added:
                if device_id not in stored:
                    raise conflict("unknown_device", "an added device is not registered", device_id=device_id.hex())
                membership = _membership(t, group_id, device_id)
                if membership is not None and membership[1] is None:
                    raise conflict("already_member", "an added device is a member", device_id=device_id.hex())
            for device_id in request.removed:
                membership = _membership(t, group_id, device_id)
                if membership is None or membership[1] is not None:
                    raise conflict("not_a_member", "a removed device is not a member", device_id=device_id.hex())
            group_bytes = t.one("SELECT stored_bytes FROM conversations WHERE group_id = ?", group_id)
            _check_quota(lim, _int(group_bytes[0]) if group_bytes else 0, stored[sender], len(data))
            if request.welcome is not None:
                _check_mailboxes(t, lim, request.added, len(request.welcome))
            self._charge(t, sender, now_ms)
            seq = head + 1
            _append(t, group_id, seq, commit, data, now_ms)
            t.run(
                "UPDATE conversations SET epoch = ?, head_seq = ?, stored_bytes = stored_bytes + ? WHERE group_id = ?",
                epoch + 1,
                seq,
                len(data),
                group_id,
            )
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
            if joins:  # a new device of a member's user, joined by external commit
                if membership is None:
                    t.run("INSERT INTO members (group_id, device_id, from_seq) VALUES (?, ?, ?)", group_id, sender, seq)
                else:
                    t.run("UPDATE members SET from_seq = ?, removed_seq = NULL WHERE group_id = ? AND device_id = ?",
                          seq, group_id, sender)  # fmt: skip
            if request.group_info is not None:
                t.run(
                    "INSERT INTO group_infos (group_id, epoch, group_info) VALUES (?, ?, ?) ON CONFLICT (group_id)"
                    " DO UPDATE SET epoch = excluded.epoch, group_info = excluded.group_info",
                    group_id, epoch + 1, request.group_info,
                )  # fmt: skip
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
                        "INSERT INTO mailbox (device_id, group_id, commit_seq, created_at_ms, bytes)"
                        " VALUES (?, ?, ?, ?, ?)",
                        device_id,
                        group_id,
                        seq,
                        now_ms,
                        len(request.welcome),
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
            rows = t.all(_READ, max_bytes, group_id, start, visible, limit, group_id)
            entries: list[Entry] = []
            for row in rows:
                if row[1] is None:  # past the page's bytes
                    break
                entries.append(Entry(_int(row[0]), _bytes(row[1])))
            last = entries[-1].seq if entries else start
            return Page(entries, visible, None if removed is not None else epoch, removed, last < visible)

        return await self._db.read(tx)

    async def user_groups(self, device: Device, limit: int) -> list[bytes]:
        def tx(t: Tx) -> list[bytes]:
            rows = t.all(
                "SELECT DISTINCT m.group_id FROM members m JOIN devices d ON d.device_id = m.device_id"
                " WHERE d.user_id = ? AND m.removed_seq IS NULL ORDER BY m.group_id LIMIT ?",
                device.user_id, limit,
            )  # fmt: skip
            return [_bytes(row[0]) for row in rows]

        return await self._db.read(tx)

    async def mls_group_info(self, group_id: bytes, device: Device) -> tuple[int, bytes] | None:
        def tx(t: Tx) -> tuple[int, bytes] | None:
            _group(t, group_id, lock=False)
            membership = _membership(t, group_id, device.device_id)
            current = membership is not None and membership[1] is None
            if not current and not _user_is_member(t, group_id, device.device_id):
                raise forbidden("not_member", "only members and their users' devices read the group's GroupInfo")
            row = t.one("SELECT epoch, group_info FROM group_infos WHERE group_id = ?", group_id)
            return None if row is None else (_int(row[0]), _bytes(row[1]))

        return await self._db.read(tx)

    async def log_pages(self, cursors: list[tuple[bytes, int]], limit: int, max_bytes: int) -> dict[bytes, LogPage]:
        def tx(t: Tx) -> dict[bytes, LogPage]:
            if t.dialect != "postgres":
                return {group_id: _log_page(t, group_id, after, limit, max_bytes) for group_id, after in cursors}
            rows = t.all(_LOG_PAGES, [g for g, _ in cursors], [a for _, a in cursors], max_bytes, limit)
            found: dict[bytes, tuple[int, int, list[Row]]] = {}
            for row in rows:
                group_id = _bytes(row[0])
                page = found.setdefault(group_id, (_int(row[1]), _int(row[2]), []))
                if row[3] is not None:
                    page[2].append(row[3:])
            return {g: _page(head, pruned, entries, limit) for g, (head, pruned, entries) in found.items()}

        if self._db.dialect == "postgres":
            return await self._db.query(tx)
        return await self._db.read(tx)

    async def recheck(self, group_ids: list[bytes], device_ids: list[bytes]) -> Recheck:
        def tx(t: Tx) -> Recheck:
            heads: dict[bytes, int] = {}
            mailboxes: dict[bytes, int] = {}
            owners: dict[bytes, bytes] = {}
            for part in _chunks(group_ids):
                for row in t.all(
                    f"SELECT group_id, head_seq FROM conversations WHERE group_id IN ({_marks(len(part))})", *part
                ):
                    heads[_bytes(row[0])] = _int(row[1])
            for part in _chunks(device_ids):
                marks = _marks(len(part))
                for row in t.all(
                    f"SELECT device_id, MAX(id) FROM mailbox WHERE device_id IN ({marks}) GROUP BY device_id", *part
                ):
                    mailboxes[_bytes(row[0])] = _int(row[1])
                for row in t.all(f"SELECT device_id, owner FROM streams WHERE device_id IN ({marks})", *part):
                    owners[_bytes(row[0])] = _bytes(row[1])
            return Recheck(heads, mailboxes, owners)

        return await self._db.read(tx)

    # -- streams --------------------------------------------------------------------------

    async def claim_stream(self, device_id: bytes, owner: bytes, now_ms: int) -> None:
        def tx(t: Tx) -> None:
            t.send(
                "INSERT INTO streams (device_id, owner, since_ms) VALUES (?, ?, ?) ON CONFLICT (device_id)"
                " DO UPDATE SET owner = excluded.owner, since_ms = excluded.since_ms",
                device_id,
                owner,
                now_ms,
            )
            t.notify(device_key(device_id))

        await self._db.write(tx)

    async def stream_owner(self, device_id: bytes) -> bytes | None:
        def tx(t: Tx) -> bytes | None:
            row = t.one("SELECT owner FROM streams WHERE device_id = ?", device_id)
            return None if row is None else _bytes(row[0])

        return await self._db.query(tx)

    # -- Welcome mailbox ------------------------------------------------------------------

    async def welcomes(
        self, device_id: bytes, after_id: int, limit: int, max_bytes: int, skip: frozenset[int] = frozenset()
    ) -> WelcomePage:
        def tx(t: Tx) -> WelcomePage:
            # the mailbox's sizes first (a device's mailbox is capped), then only the envelopes of the page
            waiting = [
                (_int(r[0]), _int(r[1]))
                for r in t.all(
                    "SELECT id, bytes FROM mailbox WHERE device_id = ? AND id > ? ORDER BY id", device_id, after_id
                )
            ]
            chosen: list[int] = []
            size = 0
            last = after_id
            for welcome_id, welcome_bytes in waiting:
                if len(chosen) == limit or (chosen and size + welcome_bytes > max_bytes):
                    break
                last = welcome_id
                if welcome_id not in skip:
                    chosen.append(welcome_id)
                    size += welcome_bytes
            more = bool(waiting) and last != waiting[-1][0]
            items: list[Welcome] = []
            for part in _chunks(chosen):
                rows = t.all(
                    "SELECT m.id, m.group_id, m.commit_seq, w.envelope FROM mailbox m"
                    " JOIN welcomes w ON w.group_id = m.group_id AND w.commit_seq = m.commit_seq"
                    f" WHERE m.id IN ({_marks(len(part))}) ORDER BY m.id",
                    *part,
                )
                items += [Welcome(_int(r[0]), _bytes(r[1]), _int(r[2]), _bytes(r[3])) for r in rows]
            return WelcomePage(items, more, last)

        return await self._db.read(tx)

    async def ack_welcomes(self, device_id: bytes, ids: list[int], now_ms: int) -> int:
        def tx(t: Tx) -> int:
            if not ids:
                return 0
            where = f"device_id = ? AND id IN ({_marks(len(ids))})"
            rows = t.all(f"SELECT group_id, commit_seq FROM mailbox WHERE {where}", device_id, *ids)
            if not rows:
                return 0
            self._charge(t, device_id, now_ms)
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

    async def record_cursors(self, cursors: dict[tuple[bytes, bytes], int]) -> None:
        rows = [(seq, group_id, device_id, seq) for (group_id, device_id), seq in sorted(cursors.items())]
        if not rows:
            return

        def tx(t: Tx) -> None:
            t.many("UPDATE members SET acked_seq = ? WHERE group_id = ? AND device_id = ? AND acked_seq < ?", rows)

        await self._db.write(tx)

    async def prune(self, now_ms: int, retention_ms: int, max_retention_ms: int) -> int:
        acked_cut = now_ms - retention_ms if retention_ms > 0 else -1
        forced_cut = now_ms - max_retention_ms if max_retention_ms > 0 else -1
        if max(acked_cut, forced_cut) < 0:
            return 0
        candidates = await self._db.read(
            lambda t: t.all(
                "SELECT group_id, MAX(CASE WHEN received_at_ms < ? THEN seq END),"
                " MAX(CASE WHEN received_at_ms < ? THEN seq END)"
                " FROM log WHERE received_at_ms < ? GROUP BY group_id",
                acked_cut,
                forced_cut,
                max(acked_cut, forced_cut),
            )
        )
        deleted = 0
        for row in candidates:
            group_id = _bytes(row[0])
            old = 0 if row[1] is None else _int(row[1])
            forced = 0 if row[2] is None else _int(row[2])

            def tx(t: Tx, group_id: bytes = group_id, old: int = old, forced: int = forced) -> int:
                _, head, pruned = _group(t, group_id, lock=True)
                through = forced
                if old > through:
                    acked = head
                    for from_seq, removed, cursor in t.all(
                        "SELECT from_seq, removed_seq, acked_seq FROM members WHERE group_id = ?", group_id
                    ):
                        needs = max(_int(from_seq), _int(cursor) + 1)
                        if removed is None or needs <= _int(removed):
                            acked = min(acked, needs - 1)
                    through = max(through, min(old, acked))
                if through <= pruned:
                    return 0
                senders = t.all(
                    "SELECT sender_device, SUM(LENGTH(envelope)) FROM log WHERE group_id = ? AND seq <= ?"
                    " GROUP BY sender_device ORDER BY sender_device",
                    group_id,
                    through,
                )
                freed = sum(_int(row[1]) for row in senders)
                t.send(
                    "UPDATE conversations SET pruned_through = ?, stored_bytes = stored_bytes - ? WHERE group_id = ?",
                    through,
                    freed,
                    group_id,
                )
                t.many(
                    "UPDATE devices SET stored_bytes = stored_bytes - ? WHERE device_id = ?",
                    [(_int(row[1]), _bytes(row[0])) for row in senders],
                )
                return t.run("DELETE FROM log WHERE group_id = ? AND seq <= ?", group_id, through)

            deleted += await self._db.write(tx)
        return deleted

    async def prune_welcomes(self, before_ms: int) -> int:
        def tx(t: Tx) -> int:
            expired = t.run("DELETE FROM mailbox WHERE created_at_ms < ?", before_ms)
            if expired:
                t.run(
                    "DELETE FROM welcomes WHERE NOT EXISTS (SELECT 1 FROM mailbox m"
                    " WHERE m.group_id = welcomes.group_id AND m.commit_seq = welcomes.commit_seq)"
                )
            return expired

        return await self._db.write(tx)

    async def sweep_buckets(self, now_ms: int) -> int:
        cutoff = now_ms - self._bucket_idle_ms()
        return await self._db.write(lambda t: t.run("DELETE FROM rate_buckets WHERE updated_ms < ?", cutoff))

"""PostgreSQL backend: psycopg 3 connection pools on worker threads, and LISTEN/NOTIFY.

Write transactions run at READ COMMITTED and lock the group's row (``FOR UPDATE``)
before touching its log, so writers of one group are serialized across every relay
process on the database; KeyPackage claims use ``FOR UPDATE SKIP LOCKED``. Reads run
in ``REPEATABLE READ READ ONLY`` transactions (one snapshot), single-statement reads
without a transaction block. A transaction that hits a unique violation, a serialization
failure or a deadlock is retried from the start. (Pipeline mode was measured: it costs
more CPU per transaction in psycopg than the round trips it saves on a local server.)

Every committed write also sends ``NOTIFY ping_relay, '<key>/<process>'`` in its own
transaction (delivered at commit, never if it rolls back). The payload names what to wake
(a group or a device) and the sending process, never the data: each relay process LISTENs
and wakes its own stream connections (its own notifications it has acted on at commit),
which re-read the database by sequence number. A post is one statement (``sqlstore.py``)
that locks, checks, appends and notifies in one round trip. A notification lost while
the LISTEN connection was down costs nothing: on reconnecting, the process wakes every
stream, and each process re-checks its groups' heads on a timer anyway (``app.py``).

A connection that died (the server restarted) is replaced and the transaction retried
when nothing had run on it yet; otherwise the request fails with ``503 unavailable``
and the client retries (posts and commits are deduplicated).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import psycopg
import psycopg.errors
from psycopg_pool import ConnectionPool, PoolTimeout

from . import migrations
from .errors import RelayError, unavailable
from .sqlstore import Row, Tx

T = TypeVar("T")
CHANNEL = "ping_relay"
_RETRIES = 8
_POOL_TIMEOUT = 10.0
"""Seconds a request waits for a database connection (e.g. while the server restarts)."""
_MIGRATION_LOCK = 0x70696E67  # "ping"
log = logging.getLogger("ping_relay.postgres")


@functools.lru_cache(maxsize=512)
def _pg(sql: str) -> str:
    return sql.replace("?", "%s")


class _PgTx:
    dialect = "postgres"
    lock = " FOR UPDATE"
    skip_locked = " FOR UPDATE SKIP LOCKED"

    def __init__(self, conn: psycopg.Connection[Row], tag: str = "") -> None:
        self._conn = conn
        self._tag = tag
        self.keys: set[str] = set()
        self.sent: set[str] = set()
        """Keys whose NOTIFY a statement of this transaction sent itself."""
        self.answered = 0
        """Statements the server has answered (0: the connection may have been dead all along)."""

    def one(self, sql: str, *params: object) -> Row | None:
        row = self._conn.execute(_pg(sql), params).fetchone()
        self.answered += 1
        return row

    def all(self, sql: str, *params: object) -> list[Row]:
        rows = self._conn.execute(_pg(sql), params).fetchall()
        self.answered += 1
        return rows

    def run(self, sql: str, *params: object) -> int:
        cursor = self._conn.execute(_pg(sql), params)
        self.answered += 1
        return cursor.rowcount

    def send(self, sql: str, *params: object) -> None:
        self._conn.execute(_pg(sql), params)

    def many(self, sql: str, rows: Sequence[Sequence[object]]) -> None:
        with self._conn.cursor() as cursor:
            cursor.executemany(_pg(sql), rows)

    def notify(self, key: str) -> None:
        self.keys.add(key)

    def notified(self, key: str) -> str:
        self.sent.add(key)
        return f"{key}/{self._tag}"


class PostgresBackend:
    dialect = "postgres"

    def __init__(
        self, dsn: str, wake: Callable[[Iterable[str]], None], wake_all: Callable[[], None], size: int
    ) -> None:
        self._dsn = dsn
        self._wake = wake
        self._wake_all = wake_all
        self._pool = ConnectionPool(
            dsn, min_size=size, max_size=size, open=False, timeout=_POOL_TIMEOUT, kwargs={"autocommit": True}
        )
        self._executor = ThreadPoolExecutor(size, thread_name_prefix="relay-postgres")
        self._listener: asyncio.Task[None] | None = None
        self._tag = secrets.token_hex(6)
        """This process in notification payloads (``key/tag``): its own are not woken twice."""

    def _transaction(self, mode: str, fn: Callable[[Tx], T]) -> tuple[T, set[str]]:
        """Run ``fn`` in a transaction (``mode`` "write" or "read") or, for "query", as
        one statement without a transaction block."""
        for attempt in range(_RETRIES):
            tx: _PgTx | None = None
            try:
                with self._pool.connection() as conn:
                    if mode == "query":
                        tx = _PgTx(conn, self._tag)
                        return fn(tx), tx.sent
                    with conn.transaction():
                        if mode == "read":
                            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                        tx = _PgTx(conn, self._tag)
                        result = fn(tx)
                        self._notify(conn, tx.keys)
                    return result, tx.keys | tx.sent
            except (
                psycopg.errors.UniqueViolation,
                psycopg.errors.SerializationFailure,
                psycopg.errors.DeadlockDetected,
            ):
                if attempt == _RETRIES - 1:
                    raise
                time.sleep(0.001 * (attempt + 1))
            except psycopg.OperationalError as exc:
                if (tx is None or tx.answered == 0) and attempt < _RETRIES - 1:
                    log.info("a pooled connection was dead (%s); retrying on another", exc)
                    continue
                raise unavailable("the database did not answer; retry") from exc
            except PoolTimeout as exc:
                raise unavailable("no database connection within the timeout; retry") from exc
        raise AssertionError("unreachable")

    def _notify(self, conn: psycopg.Connection[Row], keys: set[str]) -> None:
        if keys:
            payloads = [f"{key}/{self._tag}" for key in sorted(keys)]
            conn.execute("SELECT pg_notify(%s, k) FROM unnest(%s::text[]) k", (CHANNEL, payloads))

    def _each(self, fns: Sequence[Callable[[Tx], T]]) -> tuple[list[T | Exception], set[str]]:
        """Run each function in its own savepoint of one transaction; a refusal or a
        conflict rolls back that function alone and is returned in its place."""
        for attempt in range(_RETRIES):
            answered = 0
            try:
                with self._pool.connection() as conn:
                    results: list[T | Exception] = []
                    keys: set[str] = set()
                    sent: set[str] = set()
                    with conn.transaction():
                        for fn in fns:
                            tx = _PgTx(conn, self._tag)
                            try:
                                with conn.transaction():
                                    results.append(fn(tx))
                            except (
                                RelayError,
                                psycopg.errors.UniqueViolation,
                                psycopg.errors.SerializationFailure,
                                psycopg.errors.DeadlockDetected,
                            ) as exc:
                                results.append(exc)
                                continue
                            finally:
                                answered += tx.answered
                            keys |= tx.keys
                            sent |= tx.sent
                        self._notify(conn, keys)
                    return results, keys | sent
            except psycopg.OperationalError as exc:
                if answered == 0 and attempt < _RETRIES - 1:
                    log.info("a pooled connection was dead (%s); retrying on another", exc)
                    continue
                raise unavailable("the database did not answer; retry") from exc
            except PoolTimeout as exc:
                raise unavailable("no database connection within the timeout; retry") from exc
        raise AssertionError("unreachable")

    async def write_each(self, fns: Sequence[Callable[[Tx], T]]) -> list[T | Exception]:
        loop = asyncio.get_running_loop()
        results, keys = await loop.run_in_executor(self._executor, self._each, fns)
        if keys:
            self._wake(keys)
        return results

    async def write(self, fn: Callable[[Tx], T]) -> T:
        loop = asyncio.get_running_loop()
        result, keys = await loop.run_in_executor(self._executor, self._transaction, "write", fn)
        if keys:
            self._wake(keys)
        return result

    async def read(self, fn: Callable[[Tx], T]) -> T:
        loop = asyncio.get_running_loop()
        result, _ = await loop.run_in_executor(self._executor, self._transaction, "read", fn)
        return result

    async def query(self, fn: Callable[[Tx], T]) -> T:
        loop = asyncio.get_running_loop()
        result, keys = await loop.run_in_executor(self._executor, self._transaction, "query", fn)
        if keys:
            self._wake(keys)
        return result

    def _migrate(self) -> None:
        with self._pool.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            conn.execute(migrations.SCHEMA_VERSION_TABLE)
            tx = _PgTx(conn)
            version = migrations.pending(tx)
            if version > migrations.LATEST:
                raise RuntimeError(f"the database is at schema {version}, newer than this relay ({migrations.LATEST})")
            for number in range(version + 1, migrations.LATEST + 1):
                migrations.apply(tx, "postgres", number, int(time.time() * 1000))

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, lambda: self._pool.open(wait=True, timeout=30))
        await loop.run_in_executor(self._executor, self._migrate)
        ready = asyncio.Event()
        self._listener = asyncio.create_task(self._listen(ready), name="ping_relay.postgres.listen")
        await asyncio.wait_for(ready.wait(), timeout=30)

    async def _listen(self, ready: asyncio.Event) -> None:
        """LISTEN for other processes' commits; on a lost connection, wake everyone and retry."""
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self._dsn, autocommit=True) as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    if ready.is_set():
                        self._wake_all()  # notifications may have been missed while reconnecting
                    ready.set()
                    async for note in conn.notifies():
                        key, _, tag = note.payload.partition("/")
                        if tag != self._tag:  # this process woke its own streams at commit
                            self._wake((key,))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure of the connection: reconnect
                log.warning("LISTEN connection lost (%s); reconnecting", exc)
                self._wake_all()
                await asyncio.sleep(0.5)

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._pool.close)
        self._executor.shutdown(wait=True)

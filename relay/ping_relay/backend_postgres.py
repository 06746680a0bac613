"""PostgreSQL backend: psycopg 3 connection pools on worker threads, and LISTEN/NOTIFY.

Write transactions run at READ COMMITTED and lock the group's row (``FOR UPDATE``)
before touching its log, so writers of one group are serialized across every relay
process on the database; KeyPackage claims use ``FOR UPDATE SKIP LOCKED``. Reads run
in ``REPEATABLE READ READ ONLY`` transactions (one snapshot). A transaction that hits a
unique violation, a serialization failure or a deadlock is retried from the start.

Every committed write also sends ``NOTIFY ping_relay, '<key>'`` (delivered at commit);
each relay process LISTENs and wakes its own stream connections, so a device
connected to one process sees posts made through another.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import psycopg
import psycopg.errors
from psycopg_pool import ConnectionPool

from . import migrations
from .sqlstore import Row, Tx

T = TypeVar("T")
CHANNEL = "ping_relay"
_RETRIES = 8
_MIGRATION_LOCK = 0x70696E67  # "ping"
log = logging.getLogger("ping_relay.postgres")


class _PgTx:
    lock = " FOR UPDATE"
    skip_locked = " FOR UPDATE SKIP LOCKED"

    def __init__(self, conn: psycopg.Connection[Row]) -> None:
        self._conn = conn
        self.keys: set[str] = set()

    def one(self, sql: str, *params: object) -> Row | None:
        return self._conn.execute(sql.replace("?", "%s"), params).fetchone()

    def all(self, sql: str, *params: object) -> list[Row]:
        return self._conn.execute(sql.replace("?", "%s"), params).fetchall()

    def run(self, sql: str, *params: object) -> int:
        return self._conn.execute(sql.replace("?", "%s"), params).rowcount

    def notify(self, key: str) -> None:
        self.keys.add(key)


class PostgresBackend:
    def __init__(
        self, dsn: str, wake: Callable[[Iterable[str]], None], wake_all: Callable[[], None], size: int
    ) -> None:
        self._dsn = dsn
        self._wake = wake
        self._wake_all = wake_all
        self._pool = ConnectionPool(dsn, min_size=1, max_size=size, open=False, kwargs={"autocommit": True})
        self._executor = ThreadPoolExecutor(size, thread_name_prefix="relay-postgres")
        self._listener: asyncio.Task[None] | None = None

    def _transaction(self, read_only: bool, fn: Callable[[Tx], T]) -> tuple[T, set[str]]:
        for attempt in range(_RETRIES):
            try:
                with self._pool.connection() as conn, conn.transaction():
                    if read_only:
                        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                    tx = _PgTx(conn)
                    result = fn(tx)
                    for key in sorted(tx.keys):
                        conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, key))
                return result, tx.keys
            except (
                psycopg.errors.UniqueViolation,
                psycopg.errors.SerializationFailure,
                psycopg.errors.DeadlockDetected,
            ):
                if attempt == _RETRIES - 1:
                    raise
                time.sleep(0.001 * (attempt + 1))
        raise AssertionError("unreachable")

    async def write(self, fn: Callable[[Tx], T]) -> T:
        loop = asyncio.get_running_loop()
        result, keys = await loop.run_in_executor(self._executor, self._transaction, False, fn)
        if keys:
            self._wake(keys)
        return result

    async def read(self, fn: Callable[[Tx], T]) -> T:
        loop = asyncio.get_running_loop()
        result, _ = await loop.run_in_executor(self._executor, self._transaction, True, fn)
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
                        self._wake((note.payload,))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("LISTEN connection lost; reconnecting")
                self._wake_all()
                await asyncio.sleep(1.0)

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._pool.close)
        self._executor.shutdown(wait=True)

"""SQLite backend: the standard library's sqlite3 on worker threads.

One writer thread (every write transaction is ``BEGIN IMMEDIATE``, so writes are
serialized, also against other processes on the same file) and two reader threads
(WAL: readers never block the writer). ``journal_mode=WAL``, ``synchronous=FULL``: a
transaction is on disk when ``COMMIT`` returns.

Group commit: the writer takes every write waiting in its queue (up to
``_BATCH``) and runs them in one transaction, each in its own savepoint, in arrival
order. A write that fails rolls back to its savepoint alone; the others commit together
with one ``fsync``, and each caller gets its reply only after that commit.
"""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from . import migrations
from .errors import RelayError
from .sqlstore import Row, Tx

T = TypeVar("T")
_BUSY_TIMEOUT_MS = 30_000
_BATCH = 256
_Job = tuple[Callable[["_SqliteTx"], Any], "asyncio.Future[tuple[Any, set[str]]]", asyncio.AbstractEventLoop]


def _settle(
    future: asyncio.Future[tuple[Any, set[str]]], value: tuple[Any, set[str]] | None, error: BaseException | None
) -> None:
    if future.cancelled():
        return
    if error is not None or value is None:
        future.set_exception(error or RuntimeError("a write job ended without a result"))
    else:
        future.set_result(value)


class _SqliteTx:
    dialect = "sqlite"
    lock = ""
    skip_locked = ""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self.keys: set[str] = set()

    def one(self, sql: str, *params: object) -> Row | None:
        row: Row | None = self._conn.execute(sql, params).fetchone()
        return row

    def all(self, sql: str, *params: object) -> list[Row]:
        return list(self._conn.execute(sql, params).fetchall())

    def run(self, sql: str, *params: object) -> int:
        return self._conn.execute(sql, params).rowcount

    def send(self, sql: str, *params: object) -> None:
        self._conn.execute(sql, params)

    def many(self, sql: str, rows: Sequence[Sequence[object]]) -> None:
        self._conn.executemany(sql, rows)

    def notify(self, key: str) -> None:
        self.keys.add(key)

    def notified(self, key: str) -> str:
        self.keys.add(key)
        return key


class SqliteBackend:
    dialect = "sqlite"

    def __init__(self, path: str, wake: Callable[[Iterable[str]], None]) -> None:
        self._path = path
        self._wake = wake
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._writer = threading.Thread(target=self._write_loop, name="relay-sqlite-write", daemon=True)
        self._readers = ThreadPoolExecutor(2, thread_name_prefix="relay-sqlite-read")
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._guard = threading.Lock()

    def _connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(
                self._path, timeout=_BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
            self._local.conn = conn
            with self._guard:
                self._connections.append(conn)
        return conn

    def _transaction(self, begin: str, fn: Callable[[Tx], T]) -> tuple[T, set[str]]:
        conn = self._connection()
        if begin:
            conn.execute(begin)
        tx = _SqliteTx(conn)
        try:
            result = fn(tx)
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        if begin:
            conn.execute("COMMIT")
        return result, tx.keys

    def _write_loop(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            batch = [job]
            stop = False
            while len(batch) < _BATCH:
                try:
                    more = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                batch.append(more)
            self._run_batch(batch)
            if stop:
                return

    def _run_batch(self, batch: list[_Job]) -> None:
        conn = self._connection()
        outcomes: list[tuple[tuple[Any, set[str]] | None, BaseException | None]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for fn, _, _ in batch:
                conn.execute("SAVEPOINT job")
                tx = _SqliteTx(conn)
                try:
                    value = fn(tx)
                except Exception as exc:  # noqa: BLE001 - the error goes to this job's caller
                    conn.execute("ROLLBACK TO job")
                    conn.execute("RELEASE job")
                    outcomes.append((None, exc))
                    continue
                conn.execute("RELEASE job")
                outcomes.append(((value, tx.keys), None))
            conn.execute("COMMIT")
        except Exception as exc:  # noqa: BLE001 - the batch failed as a whole: every caller gets the error
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            outcomes = [(None, exc)] * len(batch)
        for (_, future, loop), (value, error) in zip(batch, outcomes, strict=True):
            loop.call_soon_threadsafe(_settle, future, value, error)

    async def write(self, fn: Callable[[Tx], T]) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[Any, set[str]]] = loop.create_future()
        self._jobs.put((fn, future, loop))
        result, keys = await future
        if keys:
            self._wake(keys)
        return result  # type: ignore[no-any-return]

    async def read(self, fn: Callable[[Tx], T]) -> T:
        loop = asyncio.get_running_loop()
        result, _ = await loop.run_in_executor(self._readers, self._transaction, "BEGIN", fn)
        return result

    async def write_each(self, fns: Sequence[Callable[[Tx], T]]) -> list[T | Exception]:
        """Each function as its own write (the writer commits queued writes together anyway)."""
        results: list[T | Exception] = []
        for fn in fns:
            try:
                results.append(await self.write(fn))
            except RelayError as exc:
                results.append(exc)
        return results

    async def query(self, fn: Callable[[Tx], T]) -> T:
        loop = asyncio.get_running_loop()
        result, _ = await loop.run_in_executor(self._readers, self._transaction, "", fn)
        return result

    def _migrate(self) -> int:
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(migrations.SCHEMA_VERSION_TABLE)
            tx = _SqliteTx(conn)
            version = migrations.pending(tx)
            if version > migrations.LATEST:
                raise RuntimeError(f"the database is at schema {version}, newer than this relay ({migrations.LATEST})")
            for number in range(version + 1, migrations.LATEST + 1):
                migrations.apply(tx, "sqlite", number, int(time.time() * 1000))
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return migrations.LATEST

    async def start(self) -> None:
        await asyncio.to_thread(self._migrate)
        self._writer.start()

    async def close(self) -> None:
        def close_all() -> None:
            with self._guard:
                for conn in self._connections:
                    conn.close()
                self._connections.clear()

        if self._writer.is_alive():
            self._jobs.put(None)
            await asyncio.to_thread(self._writer.join)
        self._readers.shutdown(wait=True)
        close_all()


def sqlite_path(url: str) -> str:
    """The file of a ``sqlite:///relative`` or ``sqlite:////absolute`` URL."""
    path = url.removeprefix("sqlite://")
    if not path.startswith("/") or path in {"/", "/:memory:"}:
        raise ValueError(f"not a SQLite file URL: {url!r} (use sqlite:///relay.db or sqlite:////abs/path.db)")
    return path[1:]

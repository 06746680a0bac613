"""Retention under a steady load: devices acknowledge what they applied (ack frames), the
relay prunes what every member acknowledged once it is older than --retention, and the
log's row count stays bounded while posts keep coming."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from relay_client import ORIGIN

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench" / "relay"))

import loadgen

RATE, SECONDS, RETENTION = 80.0, 16.0, 1.0


def log_rows(db: str) -> int:
    if db.startswith("sqlite:"):
        import sqlite3

        conn = sqlite3.connect(db.removeprefix("sqlite:///"))
        try:
            return int(conn.execute("SELECT COUNT(*) FROM log").fetchone()[0])
        finally:
            conn.close()
    import psycopg

    with psycopg.connect(db, autocommit=True) as conn:
        row = conn.execute("SELECT COUNT(*) FROM log").fetchone()
        return int(row[0]) if row else 0


def test_log_stays_bounded_under_steady_load(spawn, databases, capsys) -> None:
    db = databases.new()
    relay = spawn(
        "--retention", str(RETENTION), "--prune-interval", "0.5", "--cursor-flush-interval", "0.25", db=db
    )  # fmt: skip
    samples: list[int] = []

    async def scenario() -> loadgen.Report:
        pop = loadgen.Population([relay.url], 20, 5, ORIGIN, ack_interval=0.25)
        try:
            await pop.setup()
            await pop.connect(within=60)
            load = asyncio.create_task(pop.open_loop(RATE, SECONDS))
            while not load.done():
                await asyncio.sleep(1.0)
                samples.append(await asyncio.to_thread(log_rows, db))
            await load
            assert await pop.drain(30)
            return pop.checker.finish()
        finally:
            await pop.close()

    report = asyncio.run(scenario())
    with capsys.disabled():
        print(f"\nretention: log rows each second {samples}; {report.summary()}")
    assert report.clean, report.summary()
    assert report.acked >= RATE * SECONDS * 0.8, report.summary()
    # an entry lives about retention + ack interval + cursor flush + prune interval: 2 s here
    bound = RATE * (RETENTION + 0.25 + 0.25 + 0.5) * 2 + 50
    steady = samples[len(samples) // 3 :]
    assert max(steady) <= bound, (samples, bound)
    assert max(samples) < report.acked / 3, (samples, report.acked)

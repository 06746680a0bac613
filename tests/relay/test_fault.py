"""The fault run: two relay processes on one PostgreSQL under steady load from the load
generator (bench/relay/loadgen.py). One process is SIGKILLed and started again, then
PostgreSQL itself restarts (``pg_ctl restart`` on the throwaway cluster of
``./build.sh test``). Devices reconnect to whichever process answers and subscribe again
from their cursors; posts whose reply was lost are retried with the same bytes. Every
acknowledged post must reach every member exactly once, in each sender's order.

Needs PING_RELAY_TEST_PGDATA (the cluster's data directory), PING_RELAY_TEST_PGBIN and,
when the cluster runs as another user, PING_RELAY_TEST_PGUSER: build.sh exports them.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from relay_client import ORIGIN

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench" / "relay"))

import loadgen

PGDATA = os.environ.get("PING_RELAY_TEST_PGDATA", "")
PGBIN = os.environ.get("PING_RELAY_TEST_PGBIN", "/usr/lib/postgresql/15/bin")
PGUSER = os.environ.get("PING_RELAY_TEST_PGUSER", "")
DEVICES, GROUP_SIZE, RATE = 24, 6, 60.0


def restart_postgres() -> float:
    """``pg_ctl restart -m fast``: every connection is cut; seconds it took."""
    cmd = [f"{PGBIN}/pg_ctl", "-D", PGDATA, "-m", "fast", "-w", "-t", "60"]
    cmd += ["-l", str(Path(PGDATA).parent / "server.log"), "restart"]
    if PGUSER:
        cmd = ["runuser", "-u", PGUSER, "--", *cmd]
    started = time.monotonic()
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    return time.monotonic() - started


def test_kill_a_process_then_restart_postgres_under_load(spawn, databases, backend, capsys) -> None:
    if backend != "postgres":
        pytest.skip("the fault run is PostgreSQL's (two processes, a database restart)")
    if not PGDATA:
        pytest.skip("PING_RELAY_TEST_PGDATA is not set (./build.sh test sets it for its throwaway cluster)")
    db = databases.new()
    relays = [spawn("--recheck-interval", "1", db=db), spawn("--recheck-interval", "1", db=db)]
    events: list[str] = []

    async def scenario() -> tuple[loadgen.Report, int, int, bool]:
        pop = loadgen.Population([r.url for r in relays], DEVICES, GROUP_SIZE, ORIGIN)
        try:
            await pop.setup()
            await pop.connect(within=60)
            start = time.monotonic()
            load = asyncio.create_task(pop.open_loop(RATE, 30.0))
            await asyncio.sleep(5)
            relays[0].kill()
            events.append(f"{time.monotonic() - start:.1f}s SIGKILL relay 0")
            await asyncio.sleep(3)
            await asyncio.to_thread(relays[0].start)
            events.append(f"{time.monotonic() - start:.1f}s relay 0 started again")
            await asyncio.sleep(5)
            took = await asyncio.to_thread(restart_postgres)
            events.append(f"{time.monotonic() - start:.1f}s PostgreSQL restarted ({took:.1f} s)")
            _, skipped = await load
            drained = await pop.drain(60)
            events.append(f"{time.monotonic() - start:.1f}s load over, drained: {drained}")
            return pop.checker.finish(), pop.reconnects(), skipped, drained
        finally:
            await pop.close()

    report, reconnects, skipped, drained = asyncio.run(scenario())
    summary = (
        f"fault run: {report.summary()}; {reconnects} stream reconnects, {skipped} posts skipped (no idle device);"
        f" {'; '.join(events)}"
    )
    with capsys.disabled():
        print("\n" + summary)
    assert drained, summary
    assert report.posted == report.acked, summary  # every post was acknowledged in the end (retries)
    assert report.acked > 600, summary
    assert (report.lost, report.duplicated, report.out_of_order) == (0, 0, 0), summary
    assert (report.gaps, report.mismatched, report.unexpected) == (0, 0, 0), summary
    assert reconnects > 0, summary  # the faults did cut streams
    assert report.delivered == report.acked * GROUP_SIZE, summary
    for r in relays:
        assert r.alive()

"""``./build.sh bench relay``: the relay under load, side by side with Redis Streams and
NATS JetStream carrying the same payloads, in one table.

For every system, with 100 and 1,000 connected devices in groups of 2, 10 and 100:

1. start the servers (relay processes on a fresh SQLite file or PostgreSQL database,
   or a fresh redis-server / nats-server), register and log in every device, make the
   groups, connect one stream (or consumer) per device;
2. *throughput*: every device posts, one request at a time, as fast as the server
   accepts (at most ``CONCURRENCY`` requests in flight) for ``SATURATE`` seconds:
   accepted posts per second;
3. *latency*: posts at half that rate for ``STEADY`` seconds, each timed from just before
   its request until the last member's stream delivered it: p50 / p99 / max;
4. wait until every acknowledged post reached every member, and check every delivery
   (``loadgen.Checker``): lost, duplicated, out of order must be 0;
5. memory: RSS of the server process(es) divided by the connected devices; storage:
   bytes of the log (table and indexes, or the broker's files) per stored message.

The PostgreSQL server is ``PING_RELAY_TEST_POSTGRES`` (``build.sh`` starts a throwaway
cluster). ``PING_RELAY_BENCH_QUICK=1`` runs a short smoke version (100 devices only).
The table goes to stdout and to ``bench/relay/RESULTS.md``.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvloop

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path[:0] = [str(HERE), str(ROOT)]

import loadgen  # noqa: E402

from tools import loopback  # noqa: E402

QUICK = os.environ.get("PING_RELAY_BENCH_QUICK") == "1"
SATURATE = 3.0 if QUICK else 8.0
STEADY = 3.0 if QUICK else 8.0
CONCURRENCY = 128
DEVICES = [100] if QUICK else [100, 1000]
GROUP_SIZES = [2, 10, 100]
ORIGIN = "http://relay.bench"
PG_DSN = os.environ.get("PING_RELAY_TEST_POSTGRES", "")
RELAY_ARGS = ["--anon-rate-per-second", "100000", "--anon-burst", "100000"]
"""Every simulated device registers from 127.0.0.1: the per-address limit of unauthenticated
requests is raised. Per-device limits stay at their defaults (50/s, burst 200)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def wait_port(port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not start")


@dataclass
class Servers:
    """Server processes of one run, stopped together."""

    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    urls: list[str] = field(default_factory=list)
    cleanup: list[Any] = field(default_factory=list)

    def rss(self) -> int:
        return sum(rss_bytes(p.pid) for p in self.procs if p.poll() is None)

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        for fn in reversed(self.cleanup):
            with contextlib.suppress(Exception):
                fn()


def start_relays(db: str, count: int, log_dir: Path) -> Servers:
    servers = Servers()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "relay"), env.get("PYTHONPATH", "")])
    for _ in range(count):
        port = free_port()
        cmd = [sys.executable, "-m", "ping_relay", "--db", db, "--host", "127.0.0.1", "--port", str(port)]
        cmd += ["--origin", ORIGIN, "--log-level", "warning", *RELAY_ARGS]
        log = (log_dir / f"relay-{port}.log").open("ab")
        proc = subprocess.Popen(cmd, stdout=log, stderr=log, env=env, cwd=str(ROOT))
        servers.procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        servers.urls.append(url)
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                servers.stop()
                raise RuntimeError(f"relay exited: see {log.name}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/v1/info", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                servers.stop()
                raise RuntimeError("relay did not start")
            time.sleep(0.1)
    return servers


def new_postgres_db() -> tuple[str, Any]:
    import psycopg

    name = f"bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    base, _, _ = PG_DSN.rpartition("/")
    dsn = f"{base}/{name}"

    def drop() -> None:
        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    return dsn, drop


def log_bytes_per_message(db: str) -> float:
    """Bytes of the ``log`` table and its indexes per row."""
    if db.startswith("sqlite:"):
        import sqlite3

        conn = sqlite3.connect(db.removeprefix("sqlite:///"))
        try:
            rows = conn.execute("SELECT COUNT(*) FROM log").fetchone()[0]
            size = conn.execute(
                "SELECT SUM(pgsize) FROM dbstat WHERE name IN (SELECT name FROM sqlite_master WHERE tbl_name = 'log')"
            ).fetchone()[0]
        finally:
            conn.close()
        return size / rows if rows else float("nan")
    import psycopg

    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE log")
        rows = conn.execute("SELECT COUNT(*) FROM log").fetchone()[0]
        size = conn.execute("SELECT pg_total_relation_size('log')").fetchone()[0]
    return size / rows if rows else float("nan")


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


@dataclass
class Row:
    system: str
    processes: int
    devices: int
    group: int
    accepted: float = float("nan")
    rate: float = float("nan")
    p50: float = float("nan")
    p99: float = float("nan")
    max: float = float("nan")
    rss_per_device: float = float("nan")
    bytes_per_message: float = float("nan")
    lost: int = 0
    duplicated: int = 0
    out_of_order: int = 0
    other: int = 0
    load: float = float("nan")
    note: str = ""


async def measure(pop: loadgen.Population, row: Row, servers: Servers) -> None:
    await pop.setup()
    await pop.connect(within=300)
    row.rss_per_device = servers.rss() / len(pop.devices)
    row.load = os.getloadavg()[0]
    accepted, seconds = await pop.closed_loop(SATURATE, CONCURRENCY)
    row.accepted = accepted / seconds
    if not await pop.drain(120):
        row.note = "throughput phase not drained in 120 s"
    row.rate = row.accepted / 2
    posts, skipped = await pop.open_loop(row.rate, STEADY)
    drained = await pop.drain(120)
    if not drained:
        row.note = "not drained in 120 s"
    if skipped:
        row.note = (row.note + "; " if row.note else "") + f"{skipped} posts skipped (no idle device)"
    lat = pop.checker.latencies(posts)
    row.p50, row.p99, row.max = loadgen.percentile(lat, 0.5), loadgen.percentile(lat, 0.99), max(lat, default=0)
    report = pop.checker.finish()
    row.lost, row.duplicated, row.out_of_order = report.lost, report.duplicated, report.out_of_order
    row.other = report.gaps + report.mismatched + report.unexpected
    reconnects = pop.reconnects()
    if reconnects:
        row.note = (row.note + "; " if row.note else "") + f"{reconnects} stream reconnects"
    if pop.fatal():
        row.note = (row.note + "; " if row.note else "") + f"stream errors: {sorted(set(pop.fatal()))}"


def run_relay(backend: str, processes: int, devices: int, group: int, work: Path) -> Row:
    row = Row(f"relay, {backend}", processes, devices, group)
    if backend == "SQLite":
        db, drop = f"sqlite:///{work / f'relay-{uuid.uuid4().hex[:8]}.db'}", None
    else:
        db, drop = new_postgres_db()
    servers = start_relays(db, processes, work)
    if drop is not None:
        servers.cleanup.append(drop)
    try:

        async def go() -> None:
            pop = loadgen.Population(servers.urls, devices, group, ORIGIN)
            try:
                await measure(pop, row, servers)
            finally:
                await pop.close()

        uvloop.run(go())
        row.bytes_per_message = log_bytes_per_message(db)
    finally:
        servers.stop()
    return row


def run_redis(devices: int, group: int, work: Path) -> Row:
    row = Row("Redis Streams", 1, devices, group)
    data = Path(tempfile.mkdtemp(dir=work))
    port = free_port()
    log = (work / "redis.log").open("ab")
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data), "--save", "",
         "--appendonly", "yes", "--appendfsync", "always", "--maxclients", "10000"],
        stdout=log, stderr=log,
    )  # fmt: skip
    servers = Servers([proc], [f"redis://127.0.0.1:{port}"], [lambda: shutil.rmtree(data, ignore_errors=True)])
    try:
        wait_port(port, proc, "redis-server")

        async def go() -> int:
            pop = loadgen.RedisPopulation(servers.urls[0], devices, group)
            try:
                await measure(pop, row, servers)
            finally:
                await pop.close()
            return pop.checker.report.acked

        acked = uvloop.run(go())
        row.bytes_per_message = dir_bytes(data) / max(1, acked)
    finally:
        servers.stop()
    return row


def run_nats(devices: int, group: int, work: Path) -> Row:
    row = Row("NATS JetStream", 1, devices, group)
    data = Path(tempfile.mkdtemp(dir=work))
    port = free_port()
    log = (work / "nats.log").open("ab")
    proc = subprocess.Popen(
        ["nats-server", "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(data)], stdout=log, stderr=log
    )
    servers = Servers([proc], [f"nats://127.0.0.1:{port}"], [lambda: shutil.rmtree(data, ignore_errors=True)])
    try:
        wait_port(port, proc, "nats-server")

        async def go() -> int:
            pop = loadgen.NatsPopulation(servers.urls[0], devices, group)
            try:
                await measure(pop, row, servers)
            finally:
                await pop.close()
            return pop.checker.report.acked

        acked = uvloop.run(go())
        row.bytes_per_message = dir_bytes(data) / max(1, acked)
    finally:
        servers.stop()
    return row


def fmt(value: float, digits: int = 0) -> str:
    if value != value:  # NaN
        return "—"
    return f"{value:,.{digits}f}"


def table(rows: list[Row]) -> str:
    head = (
        "| system | processes | devices | group | accepted posts/s | steady rate (posts/s) | fan-out p50 (ms) |"
        " p99 (ms) | max (ms) | RSS / device (KiB) | bytes / message | lost / dup / out of order | load |"
    )
    lines = [head, "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |"]
    for r in rows:
        errors = f"{r.lost} / {r.duplicated} / {r.out_of_order}" + (f" (+{r.other} other)" if r.other else "")
        lines.append(
            f"| {r.system} | {r.processes} | {r.devices:,} | {r.group} | {fmt(r.accepted)} | {fmt(r.rate)} |"
            f" {fmt(r.p50, 1)} | {fmt(r.p99, 1)} | {fmt(r.max, 1)} | {fmt(r.rss_per_device / 1024, 1)} |"
            f" {fmt(r.bytes_per_message)} | {errors} | {fmt(r.load, 2)} |"
        )
    return "\n".join(lines)


def main() -> int:
    loopback.install_guard()  # the servers, the load generator and PostgreSQL: loopback only
    if not PG_DSN:
        print("PING_RELAY_TEST_POSTGRES is not set (./build.sh bench relay starts a PostgreSQL)", file=sys.stderr)
        return 2
    started = time.time()
    load_start = os.getloadavg()
    rows: list[Row] = []
    work = Path(tempfile.mkdtemp(prefix="ping-relay-bench-"))
    plan: list[tuple[str, Any]] = []
    for devices in DEVICES:
        for group in GROUP_SIZES:
            if group > devices:
                continue
            plan += [
                (f"relay SQLite x1 {devices}/{group}", lambda d=devices, g=group: run_relay("SQLite", 1, d, g, work)),
                (f"relay PostgreSQL x1 {devices}/{group}", lambda d=devices, g=group: run_relay("PostgreSQL", 1, d, g, work)),
                (f"relay PostgreSQL x2 {devices}/{group}", lambda d=devices, g=group: run_relay("PostgreSQL", 2, d, g, work)),
                (f"Redis Streams {devices}/{group}", lambda d=devices, g=group: run_redis(d, g, work)),
                (f"NATS JetStream {devices}/{group}", lambda d=devices, g=group: run_nats(d, g, work)),
            ]  # fmt: skip
    failed = 0
    try:
        for name, fn in plan:
            print(f"  {name} ...", file=sys.stderr, flush=True)
            try:
                row = fn()
            except Exception as exc:  # noqa: BLE001 - a failed run is a row that says so
                failed += 1
                system, _, rest = name.rpartition(" ")
                devices, group = (int(x) for x in rest.split("/"))
                row = Row(system, 0, devices, group, note=f"failed: {type(exc).__name__}: {exc}"[:200])
            rows.append(row)
            print(
                f"    {fmt(row.accepted)} posts/s; at {fmt(row.rate)}/s p50 {fmt(row.p50, 1)} ms, p99 {fmt(row.p99, 1)}"
                f" ms, max {fmt(row.max, 1)} ms; lost {row.lost} dup {row.duplicated} ooo {row.out_of_order}"
                f" other {row.other}; load {fmt(row.load, 2)} {row.note}",
                file=sys.stderr,
                flush=True,
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    load_end = os.getloadavg()
    command = "PING_RELAY_BENCH_QUICK=1 ./build.sh bench relay" if QUICK else "./build.sh bench relay"
    revision = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout
    notes = [f"- {r.system} x{r.processes} {r.devices}/{r.group}: {r.note}" for r in rows if r.note]
    body = "\n".join(
        [
            "# Relay benchmark results",
            "",
            "Generated by `bench/relay/run.py`; do not edit by hand (what it measures: its docstring and"
            " docs/relay.md, section 12).",
            "",
            f"- date: {datetime.datetime.now(datetime.UTC).isoformat(timespec='seconds')}",
            f"- command: `{command}`; {SATURATE:g} s throughput and {STEADY:g} s steady phase per row;"
            f" total {time.time() - started:.0f} s",
            f"- machine: {os.cpu_count()} CPUs, {platform.machine()}, Linux {platform.release()};"
            f" load average (1, 5, 15 min) {', '.join(f'{x:.2f}' for x in load_start)} at start,"
            f" {', '.join(f'{x:.2f}' for x in load_end)} at end (the load column: 1-minute load when the"
            " row's measurement started)",
            f"- ping-web revision: {revision.strip()}; Python {platform.python_version()}; servers, PostgreSQL and"
            " the load generator share the machine",
            "- payload: a 256-byte ciphertext application envelope (ping_web.core.envelope), the same bytes for"
            " every system; each device posts one at a time; fan-out latency is from just before the post's"
            " request until the last member's stream delivered it",
            "- relay: default limits (per-device 50/s, burst 200) but the per-address limit raised (every device"
            " registers from 127.0.0.1); 2 processes: a device streams from one and posts through the other;"
            " PostgreSQL with its defaults (synchronous_commit on); SQLite synchronous=FULL",
            "- Redis 7.0 Streams: appendonly yes, appendfsync always (a reply after the entry is on disk);"
            " NATS 2.9 JetStream: file store with its defaults (written to the OS at once, fsync every 2 min);"
            " neither checks who may read or write a group",
            "",
            table(rows),
            "",
            *(["Notes:", "", *notes, ""] if notes else []),
        ]
    )
    print(body)
    if not QUICK:
        (HERE / "RESULTS.md").write_text(body + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

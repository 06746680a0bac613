"""Several relay processes on one database: the write rate, the one stream of a device and
the fan-out hold across processes, also when wake-ups are lost."""

from __future__ import annotations

import json
import threading
import time

import httpx
import psycopg
import pytest
from websockets.exceptions import ConnectionClosed

from relay_client import Device, b64e, recv_json, subscribe


def test_write_rate_is_shared_by_processes(spawn, databases) -> None:
    db = databases.new()
    limits = ("--rate-per-second", "0.1", "--rate-burst", "6")
    a, b = spawn(*limits, db=db, fast=False), spawn(*limits, db=db, fast=False)
    alice = Device(a.url).setup()
    via_a, via_b = alice.http, httpx.Client(base_url=b.url, timeout=60)
    group = alice.create_group()  # one write
    for i in range(5):  # five more, alternating processes: three on a, two on b
        alice.http = via_b if i % 2 else via_a
        assert alice.send(group, 0, f"m{i}".encode()) == i + 1
    # each process has seen at most four of alice's requests (its own burst is 6), but the
    # shared write bucket is empty: the next write is refused on either process
    for client in (via_a, via_b):
        alice.http = client
        r = alice.post(group, alice.application(group, 0, b"over"))
        assert r.status_code == 429, r.text
        assert r.json()["error"] == "rate_limited"
        assert int(r.headers["retry-after"]) >= 1
    assert alice.ok("GET", f"/v1/groups/{b64e(group)}")["head"] == 5  # nothing stored
    via_a.close()
    alice.close()


def test_one_stream_per_device_across_processes(spawn, databases) -> None:
    db = databases.new()
    a, b = spawn("--recheck-interval", "0.5", db=db), spawn("--recheck-interval", "0.5", db=db)
    alice = Device(a.url).setup()
    on_b = Device(b.url)
    on_b.token = alice.token
    with alice.stream() as first:
        assert recv_json(first)["type"] == "ready"
        with on_b.stream() as second:
            assert recv_json(second)["type"] == "ready"
            with pytest.raises(ConnectionClosed) as closed:
                first.recv(timeout=20)
            assert closed.value.rcvd.code == 4409
            second.send(json.dumps({"type": "ping"}))
            assert recv_json(second) == {"type": "pong"}
    alice.close()
    on_b.close()


def test_fan_out_across_processes_survives_lost_notifications(spawn, databases, backend) -> None:
    """Posts through one process reach a stream on another in order, while the processes'
    LISTEN connections are cut again and again (a notification sent meanwhile is lost: the
    process catches up when it reconnects and on its recheck timer)."""
    if backend != "postgres":
        pytest.skip("wake-ups between processes are PostgreSQL's")
    db = databases.new()
    reader_relay = spawn("--recheck-interval", "0.5", db=db)
    writer_relay = spawn("--recheck-interval", "0.5", db=db)
    alice = Device(writer_relay.url).setup()
    bob = Device(reader_relay.url).setup()
    group = alice.create_group()
    assert alice.commit(group, 0, added=[bob.device_id]).status_code == 200
    total = 300
    done = threading.Event()

    def post_all() -> None:
        for i in range(total):
            alice.send(group, 1, f"m{i}".encode())
            if i % 40 == 0:
                time.sleep(0.05)
        done.set()

    def cut_listeners() -> None:
        dsn = db
        with psycopg.connect(dsn, autocommit=True) as conn:
            while not done.is_set():
                conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE query = 'LISTEN ping_relay' AND pid <> pg_backend_pid()"
                )
                time.sleep(0.15)

    with bob.stream() as ws:
        assert recv_json(ws)["type"] == "ready"
        subscribe(ws, {group: 1})
        threads = [threading.Thread(target=post_all), threading.Thread(target=cut_listeners)]
        for t in threads:
            t.start()
        seqs: list[int] = []
        deadline = time.monotonic() + 60
        while len(seqs) < total:
            assert time.monotonic() < deadline, seqs[-5:]
            frame = recv_json(ws, timeout=30)
            if frame["type"] == "entry":
                seqs.append(frame["seq"])
        for t in threads:
            t.join()
    assert seqs == list(range(2, total + 2))
    assert "Traceback" not in reader_relay.log()
    alice.close()
    bob.close()

"""The WebSocket stream: catch-up then live with no gap or duplicate, Welcomes, removal,
slow consumers, one connection per device, bad frames."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest
from websockets.exceptions import ConnectionClosed

from relay_client import Device, b64d, b64e, recv_json, subscribe


def frames_until(ws, stop, timeout: float = 30) -> list[dict]:
    out: list[dict] = []
    deadline = time.monotonic() + timeout
    while not stop(out):
        assert time.monotonic() < deadline, out[-5:]
        out.append(recv_json(ws, timeout=max(0.1, deadline - time.monotonic())))
    return out


def test_catch_up_then_live_without_gap_or_duplicate(spawn, databases, backend) -> None:
    db = databases.new()
    reader_relay = spawn(db=db)
    # on PostgreSQL the posts go through another relay process (wake-ups via LISTEN/NOTIFY)
    writer_relay = spawn(db=db) if backend == "postgres" else reader_relay
    alice = Device(writer_relay.url).setup()
    bob = Device(reader_relay.url).setup()
    group = alice.create_group()
    assert alice.commit(group, 0, added=[bob.device_id]).status_code == 200
    total = 400
    posted: list[int] = []
    started = threading.Event()

    def post_all() -> None:
        for i in range(total):
            posted.append(alice.send(group, 1, f"m{i}".encode()))
            if i == 60:
                started.set()

    fetched: list[int] = []

    def follow() -> None:  # an HTTP reader following its cursor while the posts run
        reader = Device(reader_relay.url)
        reader.token = bob.token
        after = 0
        while after < total + 1:
            page = reader.fetch(group, after).json()
            fetched.extend(e["seq"] for e in page["entries"])
            after = fetched[-1] if fetched else after
        reader.close()

    poster = threading.Thread(target=post_all)
    follower = threading.Thread(target=follow)
    poster.start()
    follower.start()
    started.wait(30)
    with bob.stream() as ws:
        assert recv_json(ws)["type"] == "ready"
        subscribe(ws, {group: 0})
        frames = frames_until(ws, lambda out: bool(out) and out[-1].get("seq") == total + 1, timeout=60)
    poster.join()
    follower.join()
    assert [f["type"] for f in frames if f["type"] not in ("entry", "welcome")] == ["subscribed"]
    entries = [f for f in frames if f["type"] == "entry"]
    assert [f["seq"] for f in entries] == list(range(1, total + 2))
    assert fetched == list(range(1, total + 2))
    assert sorted(posted) == list(range(2, total + 2))
    log = dict(alice.fetch_all(group))
    assert all(b64d(f["envelope"]) == log[f["seq"]] for f in entries)
    alice.close()
    bob.close()


def test_welcome_pushed_and_kept_until_acknowledged(device, relay) -> None:
    alice, bob, carol = device(), device(), device()
    group = alice.create_group()
    with bob.stream() as ws:
        assert recv_json(ws)["type"] == "ready"
        assert alice.commit(group, 0, added=[bob.device_id, carol.device_id]).status_code == 200
        welcome = recv_json(ws)
    assert welcome["type"] == "welcome"
    assert welcome["group_id"] == b64e(group)
    assert welcome["commit_seq"] == 1
    with carol.stream() as ws:  # connected after the commit: the Welcome waits in the mailbox
        assert recv_json(ws)["type"] == "ready"
        assert recv_json(ws)["id"] != welcome["id"]
    with bob.stream() as ws:  # not acknowledged: sent again
        assert recv_json(ws)["type"] == "ready"
        assert recv_json(ws) == welcome
        bob.ok("POST", "/v1/welcomes/ack", {"ids": [welcome["id"]]})
    with bob.stream() as ws:
        assert recv_json(ws)["type"] == "ready"
        ws.send(json.dumps({"type": "ping"}))
        assert recv_json(ws) == {"type": "pong"}  # and no Welcome before it


def test_removed_device_gets_entries_up_to_its_removal(device) -> None:
    alice, bob = device(), device()
    group = alice.create_group()
    alice.commit(group, 0, added=[bob.device_id])
    with bob.stream() as ws:
        assert recv_json(ws)["type"] == "ready"
        assert recv_json(ws)["type"] == "welcome"
        subscribe(ws, {group: 1})
        assert recv_json(ws)["type"] == "subscribed"
        alice.send(group, 1)  # 2
        alice.commit(group, 1, removed=[bob.device_id])  # 3
        alice.send(group, 2)  # 4
        frames = frames_until(ws, lambda out: bool(out) and out[-1]["type"] == "removed")
        assert [f["seq"] for f in frames if f["type"] == "entry"] == [2, 3]
        assert frames[-1] == {"type": "removed", "group_id": b64e(group), "removed_at": 3}
        alice.send(group, 2)  # 5: never sent to bob
        ws.send(json.dumps({"type": "ping"}))
        assert recv_json(ws) == {"type": "pong"}
        subscribe(ws, {group: 3})  # a removed device may still subscribe up to its removal
        assert recv_json(ws)["type"] == "subscribed"
        assert recv_json(ws) == {"type": "removed", "group_id": b64e(group), "removed_at": 3}


def test_subscription_refusals_and_bad_frames(device, relay) -> None:
    alice, mallory = device(), device()
    group = alice.create_group()
    alice.send(group, 0)
    with alice.stream() as ws:
        assert recv_json(ws)["type"] == "ready"
        for bad in ["not json", "[]", '{"type": "subscribe"}', '{"type": "dance"}', '{"type": "ping", "x": 1}']:
            ws.send(bad)
            frame = recv_json(ws)
            assert frame["type"] == "error"
            assert frame["status"] == 400
        ws.send(b"\x00binary")
        assert recv_json(ws)["error"] == "bad_frame"
        subscribe(ws, {group: 0})
        assert recv_json(ws)["type"] == "subscribed"
        assert recv_json(ws)["seq"] == 1
        subscribe(ws, {group: 0})
        frame = recv_json(ws)
        assert (frame["status"], frame["error"], frame["group_id"]) == (409, "already_subscribed", b64e(group))
        subscribe(ws, {bytes(16): 0})
        assert recv_json(ws)["status"] == 404
        ws.send(json.dumps({"type": "unsubscribe", "groups": [b64e(group)]}))
        assert recv_json(ws) == {"type": "unsubscribed", "group_id": b64e(group)}
        subscribe(ws, {group: 7})
        frame = recv_json(ws)
        assert (frame["status"], frame["error"], frame["head"]) == (409, "cursor_ahead", 1)
    with mallory.stream() as ws:
        assert recv_json(ws)["type"] == "ready"
        subscribe(ws, {group: 0})
        frame = recv_json(ws)
        assert (frame["status"], frame["error"]) == (403, "not_member")
    with alice.stream() as ws:
        assert recv_json(ws)["type"] == "ready"
        ws.send("x" * (64 * 1024 + 1))  # over --ws-max-frame-bytes
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
        assert closed.value.rcvd.code == 1009


def test_one_connection_per_device(device) -> None:
    alice = device()
    with alice.stream() as first:
        assert recv_json(first)["type"] == "ready"
        with alice.stream() as second:
            assert recv_json(second)["type"] == "ready"
            with pytest.raises(ConnectionClosed) as closed:
                first.recv(timeout=10)
            assert closed.value.rcvd.code == 4409
            second.send(json.dumps({"type": "ping"}))
            assert recv_json(second) == {"type": "pong"}


def test_slow_consumer_is_disconnected_and_resumes(spawn) -> None:
    relay = spawn("--ws-queue-frames", "8", "--ws-queue-bytes", "262144", "--ws-send-timeout", "0.5")
    alice = Device(relay.url).setup()
    group = alice.create_group()
    total = 120
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", relay.port))
    received: list[int] = []
    with alice.stream(sock=sock, max_queue=1, max_size=None) as ws:
        assert recv_json(ws)["type"] == "ready"
        subscribe(ws, {group: 0})
        for i in range(total):  # about 7 MiB the consumer does not read
            alice.send(group, 0, bytes([i]) * 48_000)
        time.sleep(2.0)
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                frame = recv_json(ws, timeout=20)
                if frame["type"] == "entry":
                    received.append(frame["seq"])
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 4408
        assert closed.value.rcvd.reason == "slow_consumer"
    assert 0 < len(received) < total
    assert received == list(range(1, len(received) + 1))
    with alice.stream(max_size=None) as ws:  # resume from the cursor
        assert recv_json(ws)["type"] == "ready"
        subscribe(ws, {group: received[-1]})
        frames = frames_until(ws, lambda out: bool(out) and out[-1].get("seq") == total)
        received += [f["seq"] for f in frames if f["type"] == "entry"]
    assert received == list(range(1, total + 1))
    alice.close()

"""A removed device gets nothing after the commit that removed it, on every path the
stream sends entries by (issue 17, item 2): here the hand-off from catch-up to the group's
feed, taken by a device that stalls its socket while catching up, while the commit that
removes it and later entries go out to the other members."""

from __future__ import annotations

import json
import os
import socket
import time

from websockets.sync.client import connect

from relay_client import SUBPROTOCOL, Device, b64e, recv_json, subscribe

BIG = 900 * 1024
ENTRIES = 20  # about 24 MB of frames: more than the socket buffers and the send queue (8 MiB) hold


def stalled_stream(device: Device):
    """A stream whose socket reads almost nothing until the test reads frames."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting (the window scale)
    sock.connect(("127.0.0.1", int(device.base_url.rsplit(":", 1)[1])))
    url = device.base_url.replace("http://", "ws://") + "/v1/stream"
    return connect(
        url,
        sock=sock,
        subprotocols=[SUBPROTOCOL, f"bearer.{device.token}"],
        max_size=None,
        max_queue=1,
        open_timeout=20,
    )


def test_removed_while_catching_up_gets_removed_not_later_entries(spawn) -> None:
    # the default send queue (8 MiB) has room for the small frames of the hand-off once the
    # catch-up's last big frame is in; one catch-up page holds every entry
    relay = spawn("--ws-send-timeout", "120", "--page-max-bytes", str(64 * 1024 * 1024))
    alice, bob = Device(relay.url).setup(), Device(relay.url).setup()
    group = alice.create_group()
    assert alice.commit(group, 0, added=[bob.device_id]).status_code == 200
    for _ in range(ENTRIES):
        alice.send(group, 1, os.urandom(BIG))
    head = 1 + ENTRIES
    with alice.stream(max_size=None) as live:
        assert recv_json(live)["type"] == "ready"
        subscribe(live, {group: head})  # alice follows the group: its feed is live
        assert recv_json(live)["type"] == "subscribed"
        with stalled_stream(bob) as ws:
            subscribe(ws, {group: 0})
            time.sleep(1.5)  # bob's catch-up fills the socket and its send queue, and waits
            removal = alice.commit(group, 1, removed=[bob.device_id])
            assert removal.status_code == 200, removal.text
            removed_at = removal.json()["seq"]
            later = [alice.send(group, 2, b"after bob left") for _ in range(3)]
            seen = []
            while not seen or seen[-1] != later[-1]:  # alice's feed has handed them all out
                frame = recv_json(live)
                if frame["type"] == "entry":
                    seen.append(frame["seq"])
            frames = []
            while True:
                frame = json.loads(ws.recv(timeout=30))
                frames.append(frame)
                if frame["type"] == "removed" or frame.get("seq") == later[-1]:
                    break
            try:  # anything else bob would get meanwhile
                while True:
                    frames.append(json.loads(ws.recv(timeout=1.5)))
            except TimeoutError:
                pass
    entries = [f["seq"] for f in frames if f["type"] == "entry"]
    assert entries == list(range(1, removed_at + 1)), (entries[-6:], removed_at, later)
    others = [f for f in frames if f["type"] not in ("entry", "ready", "welcome")]
    assert others == [
        {"type": "subscribed", "group_id": b64e(group), "after": 0, "head": head},
        {"type": "removed", "group_id": b64e(group), "removed_at": removed_at},
    ], others
    assert frames[-1]["type"] == "removed"
    alice.close()
    bob.close()

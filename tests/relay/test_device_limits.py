"""A user's devices are bounded (issue 17, item 11): at most 16 active in its device log, and
at most ``max_devices_per_user`` over its life at the relay (revoked ones included), past
which adding one is refused with a typed 409 and nothing is stored; the device list stays
within the active cap."""

from __future__ import annotations

import os

from ping_web.core import devlog
from ping_web.core.devlog import LogOp

from relay_client import Device, b64e
from relay_db import dump


def test_device_cap_option_counts_revoked_devices_too(spawn) -> None:
    relay = spawn("--max-devices-per-user", "3")
    user = os.urandom(8)
    first = Device(relay.url, user).setup()
    second, third = first.add_device(Device(relay.url, user)), first.add_device(Device(relay.url, user))
    assert first.revoke_device(second).status_code == 200  # two active, three ever
    fourth = Device(relay.url, user)
    before = dump(relay.db)
    r = first.append(first.next_entry(LogOp.ADD, fourth))
    assert (r.status_code, r.json()["error"], r.json()["limit"]) == (409, "too_many_devices", 3), r.text
    assert dump(relay.db) == before
    assert third.register().json()["created"] is False  # registering again is still fine
    other = Device(relay.url).setup()  # another user is not affected
    listed = other.ok("GET", f"/v1/users/{b64e(user)}/devices")["devices"]
    assert sorted(d["device_id"] for d in listed) == sorted([first.id, third.id])
    for d in [first, second, third, fourth, other]:
        d.close()


def test_a_user_lists_at_most_the_active_cap(relay) -> None:
    user = os.urandom(12)
    first = Device(relay.url, user).setup()
    for _ in range(devlog.MAX_ACTIVE_DEVICES - 1):
        first.add_device(Device(relay.url, user))
    extra = Device(relay.url, user)
    r = first.append(first.next_entry(LogOp.ADD, extra))
    assert r.status_code == 400 and r.json()["error"] == "invalid_log_entry"
    listed = first.ok("GET", f"/v1/users/{b64e(user)}/devices")["devices"]
    assert len(listed) == devlog.MAX_ACTIVE_DEVICES
    assert extra.register().status_code == 403  # never added: link_required
    first.close()

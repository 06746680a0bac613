"""A user's device list is bounded (issue 17, item 11): registration past
``max_devices_per_user`` is refused with a typed 409, and the list stays within the cap."""

from __future__ import annotations

import os

from relay_client import Device, b64e
from relay_db import dump


def test_devices_per_user_are_capped_by_default(relay) -> None:
    """One user, the default cap (100) plus one: the last registration is refused."""
    user = os.urandom(12)
    made = [Device(relay.url, user) for _ in range(101)]
    statuses = [d.register().status_code for d in made]
    assert statuses[:100] == [200] * 100
    refused = made[100].register()
    assert (refused.status_code, refused.json()["error"], refused.json()["limit"]) == (409, "too_many_devices", 100)
    made[0].login()
    listed = made[0].ok("GET", f"/v1/users/{b64e(user)}/devices")["devices"]
    assert len(listed) == 100
    for d in made:
        d.close()


def test_device_cap_option_and_idempotent_registration(spawn) -> None:
    relay = spawn("--max-devices-per-user", "3")
    user = os.urandom(8)
    devices = [Device(relay.url, user) for _ in range(4)]
    for d in devices[:3]:
        assert d.register().json()["created"] is True
    before = dump(relay.db)
    r = devices[3].register()
    assert (r.status_code, r.json()["error"], r.json()["limit"]) == (409, "too_many_devices", 3), r.text
    assert dump(relay.db) == before
    assert devices[0].register().json()["created"] is False  # registering again is still fine
    other = Device(relay.url).setup()  # another user is not affected
    assert len(other.ok("GET", f"/v1/users/{b64e(user)}/devices")["devices"]) == 3
    for d in [*devices, other]:
        d.close()

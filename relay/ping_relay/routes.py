"""The HTTP API (docs/relay.md, "HTTP endpoints"): JSON in, JSON out, typed refusals.

Order of checks on an authenticated request: bearer token (401), rate (429), body size
(413), content type (415), body shape (400), then the operation itself (403/404/409/410).
"""

from __future__ import annotations

from typing import Any, cast

from starlette.requests import ClientDisconnect, HTTPConnection, Request
from starlette.routing import Route

from ping_web.core.envelope import MessageKind

from . import PROTOCOL_VERSION, __version__, auth, wire
from .errors import (
    BucketKind,
    ClaimScope,
    JsonValue,
    RelayError,
    bad_request,
    claims_limited,
    forbidden,
    not_found,
    rate_limited,
    refuse,
    unauthorized,
)
from .relay import Relay, now_ms
from .replies import JsonReply, reply
from .storage import CommitRequest, Device, KeyPackageCount, Page

DEVICE_ID = 16
GROUP_ID = 16
USER_ID_MAX = 255
USER_GROUPS_MAX = 1000


def relay_of(request: Request) -> Relay:
    return cast(Relay, request.app.state.relay)


def ok(body: dict[str, JsonValue]) -> JsonReply:
    return reply(body)


def client_address(connection: HTTPConnection) -> str:
    """The client's address: the connection's, or what a configured proxy forwarded (uvicorn
    rewrites it only for ``--trusted-proxy`` peers)."""
    return connection.client.host if connection.client else "?"


def anonymous(request: Request) -> tuple[str, str]:
    """The key of an unauthenticated client (its address) in per-client limits."""
    return ("anon", client_address(request))


def limit_anonymous(request: Request, relay: Relay) -> None:
    retry = relay.anon_limiter.take(anonymous(request))
    if retry is not None:
        raise rate_limited(retry)


def check_failures(relay: Relay, address: str) -> None:
    """429 if ``address`` spent its failed-authentication budget (before any database lookup)."""
    retry = relay.auth_failures.peek(address)
    if retry is not None:
        raise rate_limited(retry)


def failed(relay: Relay, address: str, refusal: RelayError) -> RelayError:
    """Count a failed authentication of ``address``: ``refusal``, or 429 once over the budget."""
    retry = relay.auth_failures.take(address)
    return refusal if retry is None else rate_limited(retry)


async def authenticate(request: Request, relay: Relay) -> Device:
    """The device of the bearer token (401 otherwise), charged one request (429 past its rate)."""
    header = request.headers.get("authorization")
    if header is None:
        raise unauthorized("missing_token", "send Authorization: Bearer <token>")
    device, _ = await device_of_token(header_token(header), relay, client_address(request))
    return device


def header_token(header: str) -> str:
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise unauthorized("missing_token", "send Authorization: Bearer <token>")
    return value.strip()


async def device_of_token(text: str, relay: Relay, address: str) -> tuple[Device, int]:
    """The device a token was issued to and the token's expiry (ms); 401 or 429 otherwise.
    An unknown token counts as a failed authentication of ``address``."""
    try:
        token = wire.b64d(text, "token", size=auth.SECRET_SIZE)
    except RelayError:
        check_failures(relay, address)
        raise failed(relay, address, unauthorized("invalid_token", "unknown token")) from None
    digest = auth.token_hash(token)
    owner = relay.tokens.get(digest)
    if owner is None:
        check_failures(relay, address)
        owner = await relay.store.token_owner(digest)
        if owner is None:
            raise failed(relay, address, unauthorized("invalid_token", "unknown token"))
        relay.tokens.put(digest, owner)
    device, expires_at_ms = owner
    if expires_at_ms <= now_ms():
        raise unauthorized("token_expired", "the token has expired; authenticate again")
    retry = relay.device_limiter.take(device.device_id)
    if retry is not None:
        raise rate_limited(retry)
    return device, expires_at_ms


async def read_body(request: Request, relay: Relay, client: object) -> bytes:
    """The request's body: at most ``max_body_bytes`` (413), counted against ``client``'s
    and the process's bodies in flight while it is received (``budget.py``)."""
    limit = relay.config.limits.max_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise bad_request("bad_header", "Content-Length is not a number")
        if int(declared) > limit:
            raise refuse(413, "payload_too_large", f"the body is over {limit} bytes", limit=limit)
    budget = relay.bodies
    counted = int(declared) if declared is not None else 0
    spend_upload(relay, client, counted)
    budget.take(client, counted)
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise refuse(413, "payload_too_large", f"the body is over {limit} bytes", limit=limit)
            if size > counted:  # chunked, or longer than declared
                spend_upload(relay, client, size - counted)
                budget.take(client, size - counted)
                counted = size
            chunks.append(chunk)
    except ClientDisconnect:  # gone, or cut by the body deadline (connections.py): nobody reads a reply
        raise refuse(408, "request_timeout", "the request's body did not arrive") from None
    finally:
        budget.give_back(client, counted)
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/json":
        raise refuse(415, "unsupported_media_type", "send Content-Type: application/json")
    return b"".join(chunks)


def spend_upload(relay: Relay, client: object, size: int) -> None:
    """Spend ``size`` bytes of the client's upload rate, or 429 (nothing read yet)."""
    retry = relay.uploads.take(client, cost=float(size)) if size else None
    if retry is not None:
        raise rate_limited(retry)


def check_download(relay: Relay, client: object) -> None:
    """429 while the client owes bytes for pages it had (before building another one)."""
    retry = relay.downloads.peek(client)
    if retry is not None:
        raise rate_limited(retry)


async def json_body(
    request: Request, relay: Relay, client: object, *, required: tuple[str, ...], optional: tuple[str, ...] = ()
) -> dict[str, Any]:
    return wire.parse_object(await read_body(request, relay, client), required=required, optional=optional)


def path_id(request: Request, name: str, size: int) -> bytes:
    return wire.b64d(request.path_params[name], name, size=size)


def device_json(device: Device) -> dict[str, JsonValue]:
    return {
        "device_id": wire.b64e(device.device_id),
        "user_id": wire.b64e(device.user_id),
        "signature_public_key": wire.b64e(device.public_key),
        "registered_at_ms": device.registered_at_ms,
    }


def count_json(count: KeyPackageCount) -> dict[str, JsonValue]:
    return {
        "available": count.available,
        "last_resort": count.last_resort,
        "last_resort_claims": count.last_resort_claims,
    }


def page_json(page: Page) -> dict[str, JsonValue]:
    return {
        "entries": [{"seq": e.seq, "envelope": wire.b64e(e.envelope)} for e in page.entries],
        "head": page.head,
        "more": page.more,
        "epoch": page.epoch,
        "removed_at": page.removed_seq,
    }


# -- unauthenticated -------------------------------------------------------------------------


async def info(request: Request) -> JsonReply:
    relay = relay_of(request)
    limit_anonymous(request, relay)
    c, lim = relay.config, relay.config.limits
    return ok(
        {
            "protocol": PROTOCOL_VERSION,
            "relay": __version__,
            "origin": c.public_origin,
            "challenge_ttl_ms": int(c.challenge_ttl * 1000),
            "token_ttl_ms": int(c.token_ttl * 1000),
            "retention_ms": int(c.retention_seconds * 1000),
            "max_retention_ms": int(c.max_retention_seconds * 1000),
            "welcome_ttl_ms": int(c.welcome_ttl_seconds * 1000),
            "limits": {
                "max_body_bytes": lim.max_body_bytes,
                "max_envelope_bytes": lim.max_envelope_bytes,
                "max_key_package_bytes": lim.max_key_package_bytes,
                "max_key_packages_per_request": lim.max_key_packages_per_request,
                "max_key_packages_stored": lim.max_key_packages_stored,
                "claim_rate_per_target": lim.claim_rate_per_target,
                "claim_burst_per_target": lim.claim_burst_per_target,
                "claim_rate_per_pair": lim.claim_rate_per_pair,
                "claim_burst_per_pair": lim.claim_burst_per_pair,
                "last_resort_rate": lim.last_resort_rate,
                "last_resort_burst": lim.last_resort_burst,
                "key_packages_low": lim.key_packages_low,
                "max_welcome_bytes": lim.max_welcome_bytes,
                "max_mailbox_welcomes": lim.max_mailbox_welcomes,
                "max_mailbox_bytes": lim.max_mailbox_bytes,
                "max_device_bytes": lim.max_device_bytes,
                "max_group_bytes": lim.max_group_bytes,
                "max_devices_per_user": lim.max_devices_per_user,
                "max_roster_devices": lim.max_roster_devices,
                "max_ack_ids": lim.max_ack_ids,
                "epoch_window": lim.epoch_window,
                "rate_per_second": lim.rate_per_second,
                "rate_burst": lim.rate_burst,
                "group_rate_per_second": lim.group_rate_per_second,
                "group_burst": lim.group_burst,
                "anon_rate_per_second": lim.anon_rate_per_second,
                "anon_burst": lim.anon_burst,
                "auth_failure_rate_per_second": lim.auth_failure_rate_per_second,
                "auth_failure_burst": lim.auth_failure_burst,
                "page_default_entries": lim.page_default_entries,
                "page_max_entries": lim.page_max_entries,
                "page_max_bytes": lim.page_max_bytes,
                "ws_max_frame_bytes": lim.ws_max_frame_bytes,
                "ws_queue_bytes": lim.ws_queue_bytes,
                "ws_queue_frames": lim.ws_queue_frames,
                "ws_send_timeout_ms": int(lim.ws_send_timeout * 1000),
                "ws_max_subscriptions": lim.ws_max_subscriptions,
                "ws_ping_interval_ms": int(lim.ws_ping_interval * 1000),
                "header_timeout_ms": int(lim.header_timeout * 1000),
                "body_timeout_ms": int(lim.body_timeout * 1000),
                "max_connections": lim.max_connections,
                "upload_bytes_per_second": lim.upload_bytes_per_second,
                "upload_burst_bytes": lim.upload_burst_bytes,
                "download_bytes_per_second": lim.download_bytes_per_second,
                "download_burst_bytes": lim.download_burst_bytes,
                "body_bytes_in_flight": lim.body_bytes_in_flight,
                "body_bytes_in_flight_per_client": lim.body_bytes_in_flight_per_client,
            },
        }
    )


async def register(request: Request) -> JsonReply:
    relay = relay_of(request)
    limit_anonymous(request, relay)
    body = await json_body(
        request,
        relay,
        anonymous(request),
        required=("user_id", "device_id", "signature_public_key", "signature"),
        optional=("device_log",),
    )
    user_id = wire.b64d(body["user_id"], "user_id", lo=1, hi=USER_ID_MAX)
    device_id = wire.b64d(body["device_id"], "device_id", size=DEVICE_ID)
    public_key = wire.b64d(body["signature_public_key"], "signature_public_key", size=auth.PUBLIC_KEY_SIZE)
    signature = wire.b64d(body["signature"], "signature", size=auth.SIGNATURE_SIZE)
    if not auth.valid_public_key(public_key):
        raise bad_request(
            "bad_field",
            "signature_public_key: not an Ed25519 public key (canonical, on the curve, not of small order)",
            field="signature_public_key",
        )
    content = auth.register_content(device_id, public_key, user_id, relay.config.public_origin)
    if not auth.verify(public_key, signature, auth.LABEL_REGISTER, content):
        raise unauthorized("invalid_signature", "the signature does not verify with this key")
    genesis = None if body.get("device_log") is None else wire.sized(body["device_log"], "device_log", max_bytes=4096)
    device = Device(device_id, user_id, public_key, now_ms())
    created = await relay.identities.register(device, genesis)
    stored = device if created else await relay.store.get_device(device_id)
    return ok({"created": created, **device_json(stored or device)})


async def challenge(request: Request) -> JsonReply:
    relay = relay_of(request)
    limit_anonymous(request, relay)
    body = await json_body(request, relay, anonymous(request), required=("device_id",))
    device_id = wire.b64d(body["device_id"], "device_id", size=DEVICE_ID)
    if await relay.store.get_device(device_id) is None:
        raise unauthorized("unknown_device", "no device with this id is registered")
    if await relay.identities.revoked(device_id):
        raise forbidden("device_revoked", "this device was revoked from its user's device log")
    secret = auth.new_secret()
    now = now_ms()
    expires = now + int(relay.config.challenge_ttl * 1000)
    await relay.store.add_challenge(secret, device_id, expires, now)
    return ok({"challenge": wire.b64e(secret), "expires_at_ms": expires})


async def token(request: Request) -> JsonReply:
    relay = relay_of(request)
    limit_anonymous(request, relay)
    address = client_address(request)
    body = await json_body(request, relay, anonymous(request), required=("device_id", "challenge", "signature"))
    device_id = wire.b64d(body["device_id"], "device_id", size=DEVICE_ID)
    secret = wire.b64d(body["challenge"], "challenge", size=auth.SECRET_SIZE)
    signature = wire.b64d(body["signature"], "signature", size=auth.SIGNATURE_SIZE)
    check_failures(relay, address)
    taken = await relay.store.take_challenge(secret)
    if taken is None or taken[0] != device_id:
        raise failed(
            relay,
            address,
            unauthorized("unknown_challenge", "this challenge was never issued to this device, or was used"),
        )
    now = now_ms()
    if taken[1] <= now:
        raise failed(relay, address, unauthorized("challenge_expired", "the challenge has expired; ask for another"))
    device = await relay.store.get_device(device_id)
    if device is None:
        raise failed(relay, address, unauthorized("unknown_device", "no device with this id is registered"))
    content = auth.auth_content(secret, device_id, relay.config.public_origin)
    if not auth.verify(device.public_key, signature, auth.LABEL_AUTH, content):
        raise failed(
            relay, address, unauthorized("invalid_signature", "the signature does not verify with this device's key")
        )
    new_token = auth.new_secret()
    expires = now + int(relay.config.token_ttl * 1000)
    await relay.store.add_token(auth.token_hash(new_token), device_id, expires, now)
    relay.tokens.put(auth.token_hash(new_token), (device, expires))
    return ok({"token": wire.b64e(new_token), "expires_at_ms": expires, "device_id": wire.b64e(device_id)})


# -- devices and KeyPackages -------------------------------------------------------------------


async def device_info(request: Request) -> JsonReply:
    relay = relay_of(request)
    await authenticate(request, relay)
    device = await relay.store.get_device(path_id(request, "device_id", DEVICE_ID))
    if device is None:
        raise not_found("unknown_device", "no device with this id is registered")
    return ok(device_json(device))


async def user_devices(request: Request) -> JsonReply:
    relay = relay_of(request)
    await authenticate(request, relay)
    user_id = wire.b64d(request.path_params["user_id"], "user_id", lo=1, hi=USER_ID_MAX)
    devices = await relay.identities.active_devices(user_id)
    return ok({"user_id": wire.b64e(user_id), "devices": [device_json(d) for d in devices]})


async def publish_key_packages(request: Request) -> JsonReply:
    relay = relay_of(request)
    device = await authenticate(request, relay)
    body = await json_body(request, relay, device.device_id, required=("key_packages",), optional=("last_resort",))
    lim = relay.config.limits
    items = body["key_packages"]
    if not isinstance(items, list):
        raise bad_request("bad_field", "key_packages: expected an array", field="key_packages")
    if len(items) > lim.max_key_packages_per_request:
        raise refuse(
            413,
            "too_many_items",
            f"key_packages: at most {lim.max_key_packages_per_request} per request",
            field="key_packages",
            limit=lim.max_key_packages_per_request,
        )
    packages = [wire.sized(item, "key_packages", max_bytes=lim.max_key_package_bytes) for item in items]
    if len(set(packages)) != len(packages):
        raise bad_request("bad_field", "key_packages: duplicates", field="key_packages")
    last = body.get("last_resort")
    last_resort = None if last is None else wire.sized(last, "last_resort", max_bytes=lim.max_key_package_bytes)
    if last_resort is not None and last_resort in packages:
        raise bad_request("bad_field", "last_resort: also in key_packages", field="last_resort")
    if not packages and last_resort is None:
        raise bad_request("bad_field", "nothing to publish", field="key_packages")
    count = await relay.store.publish_key_packages(
        device.device_id, packages, last_resort, lim.max_key_packages_stored, now_ms()
    )
    return ok(count_json(count))


async def count_key_packages(request: Request) -> JsonReply:
    relay = relay_of(request)
    device = await authenticate(request, relay)
    return ok(count_json(await relay.store.count_key_packages(device.device_id)))


async def claim_key_package(request: Request) -> JsonReply:
    relay = relay_of(request)
    device = await authenticate(request, relay)
    target = path_id(request, "device_id", DEVICE_ID)
    await json_body(request, relay, device.device_id, required=())
    pair = (device.device_id, target)
    for kind, key, scope in (
        (BucketKind.CLAIM_PAIR, pair, ClaimScope.PAIR),
        (BucketKind.CLAIM_TARGET, target, ClaimScope.TARGET),
    ):
        retry = relay.mirrors[kind].peek(key)
        if retry is not None:
            raise claims_limited(scope, retry)
    claimed = await relay.store.claim_key_package(target, device.device_id, now_ms())
    relay.mirrors[BucketKind.CLAIM_PAIR].take(pair)
    relay.mirrors[BucketKind.CLAIM_TARGET].take(target)
    if claimed.last_resort:
        relay.mirrors[BucketKind.LAST_RESORT].take(target)
    return ok({"key_package": wire.b64e(claimed.key_package), "last_resort": claimed.last_resort})


# -- groups, the log, Welcomes -----------------------------------------------------------------


async def create_group(request: Request) -> JsonReply:
    relay = relay_of(request)
    device = await authenticate(request, relay)
    body = await json_body(request, relay, device.device_id, required=("group_id",))
    group_id = wire.b64d(body["group_id"], "group_id", size=GROUP_ID)
    retry = relay.mirrors[BucketKind.GROUPS].peek(device.device_id)
    if retry is not None:
        raise rate_limited(retry)
    created = await relay.store.create_group(group_id, device.device_id, now_ms())
    if created:
        relay.mirrors[BucketKind.GROUPS].take(device.device_id)
    return ok({"group_id": wire.b64e(group_id), "created": created})


async def group_info(request: Request) -> JsonReply:
    relay = relay_of(request)
    device = await authenticate(request, relay)
    group = await relay.store.group_info(path_id(request, "group_id", GROUP_ID), device.device_id)
    members: list[JsonValue] = [
        {"device_id": wire.b64e(m.device_id), "from_seq": m.from_seq, "removed_at": m.removed_seq}
        for m in group.members
    ]
    return ok(
        {
            "group_id": wire.b64e(group.group_id),
            "creator": wire.b64e(group.creator),
            "epoch": group.epoch,
            "head": group.head,
            "pruned_through": group.pruned_through,
            "members": members,
        }
    )


async def post_message(request: Request) -> JsonReply:
    relay = relay_of(request)
    device = await authenticate(request, relay)
    group_id = path_id(request, "group_id", GROUP_ID)
    body = await json_body(request, relay, device.device_id, required=("envelope",))
    envelope = wire.envelope(body["envelope"], "envelope", max_bytes=relay.config.limits.max_envelope_bytes)
    if envelope.kind is MessageKind.COMMIT:
        raise bad_request("wrong_kind", "commits go to POST /v1/groups/{group_id}/commits", field="envelope")
    if envelope.kind is MessageKind.WELCOME:
        raise bad_request("wrong_kind", "Welcomes travel with their commit", field="envelope")
    if envelope.conversation_id.raw != group_id:
        raise bad_request("group_mismatch", "the envelope is for another group", field="envelope")
    if envelope.sender_device.raw != device.device_id:
        raise forbidden("wrong_sender", "the envelope's sender is not the authenticated device")
    posted = await relay.store.post(envelope, relay.config.limits.epoch_window, now_ms())
    return ok({"seq": posted.seq, "duplicate": posted.duplicate, "epoch": posted.epoch})


async def post_commit(request: Request) -> JsonReply:
    relay = relay_of(request)
    device = await authenticate(request, relay)
    group_id = path_id(request, "group_id", GROUP_ID)
    lim = relay.config.limits
    body = await json_body(
        request, relay, device.device_id, required=("commit", "welcome", "roster"), optional=("group_info", "external")
    )
    commit = wire.envelope(body["commit"], "commit", max_bytes=lim.max_envelope_bytes)
    group_info = None
    if body.get("group_info") is not None:
        group_info = wire.sized(body["group_info"], "group_info", max_bytes=lim.max_envelope_bytes)
    external = body.get("external", False)
    if not isinstance(external, bool):
        raise bad_request("bad_field", "external: expected a boolean", field="external")
    if commit.kind is not MessageKind.COMMIT:
        raise bad_request("wrong_kind", "commit: not a commit envelope", field="commit")
    if commit.conversation_id.raw != group_id:
        raise bad_request("group_mismatch", "the commit is for another group", field="commit")
    if commit.sender_device.raw != device.device_id:
        raise forbidden("wrong_sender", "the commit's sender is not the authenticated device")

    roster = body["roster"]
    if not isinstance(roster, dict):
        raise bad_request("bad_field", "roster: expected an object", field="roster")
    roster = wire.parse_object_value(roster, "roster", required=("added", "removed", "signature"))
    added = wire.id_list(roster["added"], "roster.added", size=DEVICE_ID, most=lim.max_roster_devices)
    removed = wire.id_list(roster["removed"], "roster.removed", size=DEVICE_ID, most=lim.max_roster_devices)
    signature = wire.b64d(roster["signature"], "roster.signature", size=auth.SIGNATURE_SIZE)
    if set(added) & set(removed):
        raise bad_request("bad_roster", "a device is both added and removed")
    if device.device_id in added or device.device_id in removed:
        raise bad_request("bad_roster", "the committer cannot add or remove itself")

    welcome_bytes: bytes | None = None
    if body["welcome"] is None:
        if added:
            raise bad_request("welcome_mismatch", "devices are added but no Welcome is given", field="welcome")
    else:
        if not isinstance(body["welcome"], dict):
            raise bad_request("bad_field", "welcome: expected an object or null", field="welcome")
        item = wire.parse_object_value(body["welcome"], "welcome", required=("envelope", "joiners"))
        welcome_limit = min(lim.max_envelope_bytes, lim.max_welcome_bytes)
        welcome = wire.envelope(item["envelope"], "welcome.envelope", max_bytes=welcome_limit)
        joiners = wire.id_list(item["joiners"], "welcome.joiners", size=DEVICE_ID, most=lim.max_roster_devices)
        if (
            welcome.kind is not MessageKind.WELCOME
            or welcome.conversation_id != commit.conversation_id
            or welcome.sender_device != commit.sender_device
            or welcome.seq != commit.seq
            or welcome.hlc != commit.hlc
            or welcome.epoch != commit.epoch + 1
        ):
            raise bad_request(
                "welcome_mismatch",
                "the Welcome must be a WELCOME envelope with the commit's group, sender, seq and clock,"
                " and the commit's epoch + 1",
                field="welcome",
            )
        if not added or set(joiners) != set(added):
            raise bad_request("welcome_mismatch", "welcome.joiners must be exactly roster.added", field="welcome")
        welcome_bytes = welcome.encode()

    content = auth.roster_content(group_id, commit.epoch, commit.content_hash, added, removed)
    if not auth.verify(device.public_key, signature, auth.LABEL_ROSTER, content):
        raise forbidden("invalid_roster_signature", "roster.signature does not verify with this device's key")
    if external and (added or removed or welcome_bytes is not None):
        raise bad_request("bad_roster", "an external commit adds or removes no other device and has no Welcome")
    posted = await relay.store.commit(
        CommitRequest(group_id, commit, welcome_bytes, added, removed, signature, group_info, external), now_ms()
    )
    return ok({"seq": posted.seq, "duplicate": posted.duplicate, "epoch": posted.epoch})


async def user_groups(request: Request) -> JsonReply:
    """The groups a device of the caller's user is in (a new device joins them by external
    commit), at most ``max_user_groups``."""
    relay = relay_of(request)
    device = await authenticate(request, relay)
    groups = await relay.store.user_groups(device, USER_GROUPS_MAX)
    return ok({"groups": [wire.b64e(g) for g in groups]})


async def read_group_info(request: Request) -> JsonReply:
    relay = relay_of(request)
    device = await authenticate(request, relay)
    found = await relay.store.mls_group_info(path_id(request, "group_id", GROUP_ID), device)
    if found is None:
        raise not_found("no_group_info", "no commit of this group carried a GroupInfo yet")
    return ok({"epoch": found[0], "group_info": wire.b64e(found[1])})


async def fetch(request: Request) -> JsonReply:
    relay = relay_of(request)
    device = await authenticate(request, relay)
    group_id = path_id(request, "group_id", GROUP_ID)
    lim = relay.config.limits
    check_query(request, {"after", "limit"})
    after = wire.query_uint(request.query_params.get("after"), "after", default=0)
    limit = wire.query_uint(
        request.query_params.get("limit"), "limit", default=lim.page_default_entries, lo=1, hi=lim.page_max_entries
    )
    check_download(relay, device.device_id)
    page = await relay.store.read(group_id, device.device_id, after, limit, lim.page_max_bytes)
    relay.downloads.owe(device.device_id, float(sum(len(e.envelope) for e in page.entries)))
    relay.cursors.report(group_id, device.device_id, after)
    return ok(page_json(page))


async def welcomes(request: Request) -> JsonReply:
    relay = relay_of(request)
    device = await authenticate(request, relay)
    lim = relay.config.limits
    check_query(request, {"after", "limit"})
    after = wire.query_uint(request.query_params.get("after"), "after", default=0)
    limit = wire.query_uint(
        request.query_params.get("limit"), "limit", default=lim.page_default_entries, lo=1, hi=lim.page_max_entries
    )
    check_download(relay, device.device_id)
    page = await relay.store.welcomes(device.device_id, after, limit, lim.page_max_bytes)
    relay.downloads.owe(device.device_id, float(sum(len(w.envelope) for w in page.welcomes)))
    return ok(
        {
            "welcomes": [welcome_json(w.id, w.group_id, w.commit_seq, w.envelope) for w in page.welcomes],
            "more": page.more,
        }
    )


def welcome_json(welcome_id: int, group_id: bytes, commit_seq: int, envelope: bytes) -> dict[str, JsonValue]:
    return {
        "id": welcome_id,
        "group_id": wire.b64e(group_id),
        "commit_seq": commit_seq,
        "envelope": wire.b64e(envelope),
    }


async def ack_welcomes(request: Request) -> JsonReply:
    relay = relay_of(request)
    device = await authenticate(request, relay)
    body = await json_body(request, relay, device.device_id, required=("ids",))
    ids = body["ids"]
    most = relay.config.limits.max_ack_ids
    if not isinstance(ids, list) or not ids:
        raise bad_request("bad_field", "ids: expected a non-empty array of integers", field="ids")
    if len(ids) > most:
        raise refuse(413, "too_many_items", f"ids: at most {most}", field="ids", limit=most)
    checked = [wire.uint(i, "ids", lo=1) for i in ids]
    if len(set(checked)) != len(checked):
        raise bad_request("bad_field", "ids: duplicates", field="ids")
    acked = await relay.store.ack_welcomes(device.device_id, checked, now_ms())
    return ok({"acked": acked})


def check_query(request: Request, allowed: set[str]) -> None:
    keys = [key for key, _ in request.query_params.multi_items()]
    if len(keys) != len(set(keys)) or not set(keys) <= allowed:
        raise bad_request("bad_query", f"query parameters: at most one each of {', '.join(sorted(allowed))}")


ROUTES = [
    Route("/v1/info", info, methods=["GET"]),
    Route("/v1/devices", register, methods=["POST"]),
    Route("/v1/devices/{device_id}", device_info, methods=["GET"]),
    Route("/v1/devices/{device_id}/key-packages/claim", claim_key_package, methods=["POST"]),
    Route("/v1/users/{user_id}/devices", user_devices, methods=["GET"]),
    Route("/v1/auth/challenge", challenge, methods=["POST"]),
    Route("/v1/auth/token", token, methods=["POST"]),
    Route("/v1/key-packages", publish_key_packages, methods=["POST"]),
    Route("/v1/key-packages", count_key_packages, methods=["GET"]),
    Route("/v1/groups", create_group, methods=["POST"]),
    Route("/v1/groups/{group_id}", group_info, methods=["GET"]),
    Route("/v1/groups/{group_id}/messages", post_message, methods=["POST"]),
    Route("/v1/groups/{group_id}/messages", fetch, methods=["GET"]),
    Route("/v1/groups/{group_id}/commits", post_commit, methods=["POST"]),
    Route("/v1/groups/{group_id}/group-info", read_group_info, methods=["GET"]),
    Route("/v1/user-groups", user_groups, methods=["GET"]),
    Route("/v1/welcomes", welcomes, methods=["GET"]),
    Route("/v1/welcomes/ack", ack_welcomes, methods=["POST"]),
]

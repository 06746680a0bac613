"""Configuration and limits: every number the relay enforces, with its default.

docs/relay.md lists each one with its refusal; the CLI (``cli.py``) sets them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ping_web.core.envelope import ENVELOPE_MAX_SIZE

MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Limits:
    """Sizes and rates. A request over a size gets 413, over a rate 429 with Retry-After."""

    max_body_bytes: int = 4 * MIB
    """Largest HTTP request body (a commit and its Welcome, base64url, fit twice over)."""
    max_envelope_bytes: int = ENVELOPE_MAX_SIZE
    """Largest encoded envelope (commit, Welcome, application, proposal)."""
    max_key_package_bytes: int = 64 * 1024
    max_key_packages_per_request: int = 100
    max_key_packages_stored: int = 1000
    """Per device, not counting its last-resort KeyPackage."""
    claim_rate_per_target: float = 0.05
    """Sustained KeyPackage claims per second of one device's KeyPackages, by all claimers
    together (3 a minute); past it and the burst, 429 ``claims_limited``."""
    claim_burst_per_target: int = 30
    claim_rate_per_pair: float = 0.01
    """Sustained claims per second by one device of another's KeyPackages (one per 100 s)."""
    claim_burst_per_pair: int = 5
    last_resort_rate: float = 1 / 600
    """Sustained hand-outs per second of one device's last-resort KeyPackage (one per 10 min)."""
    last_resort_burst: int = 3
    key_packages_low: int = 3
    """A device that has published KeyPackages and has fewer regular ones left is told so on
    its stream (ping_web publishes 5 at a time)."""
    max_welcome_bytes: int = 1024 * 1024
    """Largest Welcome envelope (a commit's ``welcome.envelope``)."""
    max_mailbox_welcomes: int = 100
    """Welcomes waiting in one device's mailbox; a commit adding a device with a full
    mailbox is refused (409 ``mailbox_full``)."""
    max_mailbox_bytes: int = 16 * MIB
    """Bytes of Welcomes waiting in one device's mailbox."""
    max_device_bytes: int = 256 * MIB
    """Log bytes (envelopes) one device's posts and commits hold, in every group; pruning
    frees them (409 ``quota_exceeded``, scope ``device``)."""
    max_group_bytes: int = 1024 * MIB
    """Log bytes one group holds (409 ``quota_exceeded``, scope ``group``)."""
    max_devices_per_user: int = 100
    """Devices registered under one user id (the ``GET /v1/users/{u}/devices`` list)."""
    max_roster_devices: int = 1000
    """Most device ids in ``added`` or in ``removed`` of one commit."""
    max_ack_ids: int = 1000
    epoch_window: int = 2
    """Application messages are accepted for epochs ``current - epoch_window .. current``."""
    rate_per_second: float = 50.0
    """Sustained requests per second per authenticated device (HTTP requests and stream frames)."""
    rate_burst: int = 200
    group_rate_per_second: float = 0.5
    """Sustained group registrations per second per device (a group is a row kept for good,
    and each is a write that holds up the others); 429 ``rate_limited``."""
    group_burst: int = 20
    anon_rate_per_second: float = 20.0
    """Sustained unauthenticated requests per second per client address (register, challenge, token, info)."""
    anon_burst: int = 100
    auth_failure_rate_per_second: float = 1.0
    """Sustained failed authentications per second per client address (an unknown or
    malformed bearer token, a wrong answer to a login challenge); past it, 429 without a
    database lookup. Valid tokens this process has seen still pass."""
    auth_failure_burst: int = 20
    page_default_entries: int = 100
    page_max_entries: int = 1000
    page_max_bytes: int = 4 * MIB
    """A page stops before this many envelope bytes (it always holds at least one entry)."""
    ws_max_frame_bytes: int = 64 * 1024
    """Largest frame a client may send on the stream (larger: closed with 1009)."""
    ws_queue_bytes: int = 8 * MIB
    ws_queue_frames: int = 1024
    """The per-connection send queue: frames waiting for the socket."""
    ws_send_timeout: float = 10.0
    """Seconds the queue may stay full before the connection is closed as a slow consumer (4408)."""
    ws_max_subscriptions: int = 1000
    ws_ping_interval: float = 20.0
    header_timeout: float = 10.0
    """Seconds a request's headers may take, from the connection or the request's first byte
    (408, closed)."""
    body_timeout: float = 30.0
    """Seconds a request's body may take after its headers (408, closed)."""
    upload_bytes_per_second: float = 256 * 1024.0
    """Sustained request-body bytes per second per device (per address before it logs in):
    decoding base64 JSON costs the process's event loop about 8 ms a megabyte, and a large
    write holds up the other devices' writes in its transaction; 429 ``rate_limited``."""
    upload_burst_bytes: int = 4 * MIB
    """At least ``max_body_bytes``: the largest body must be able to pass."""
    download_bytes_per_second: float = float(MIB)
    """Sustained bytes of log and Welcome pages (HTTP) per second per device: encoding them
    costs the event loop too. A page is charged once built; the next waits (429)."""
    download_burst_bytes: int = 16 * MIB
    body_bytes_in_flight: int = 64 * MIB
    """Request-body bytes a process receives at once, from all clients (503 ``busy``)."""
    body_bytes_in_flight_per_client: int = 8 * MIB
    """Request-body bytes one device, or one address before it logs in, sends at once (429
    ``uploads_limited``): two bodies of ``max_body_bytes``."""
    max_connections: int = 4096
    """Open connections (HTTP and WebSocket) per process; more are answered 503. Keep it
    below the process's open-file limit (``ulimit -n``)."""


@dataclass(frozen=True, slots=True)
class Config:
    db: str = "sqlite:///relay.db"
    host: str = "127.0.0.1"
    port: int = 8787
    origin: str = ""
    """The relay's public origin (``scheme://host[:port]``), bound into every auth signature.
    Empty: ``http://{host}:{port}``."""
    challenge_ttl: float = 60.0
    token_ttl: float = 3600.0
    retention_seconds: float = 0.0
    """Acknowledged log entries (every member that may read one reported a cursor at or past
    it) older than this are pruned (0: never)."""
    max_retention_seconds: float = 0.0
    """Every log entry older than this is pruned, acknowledged or not (0: never)."""
    welcome_ttl_seconds: float = 30 * 24 * 3600.0
    """Welcomes not acknowledged within this are deleted (0: kept until acknowledged)."""
    prune_interval: float = 60.0
    cursor_flush_interval: float = 1.0
    """How often the cursors devices reported are written to the database (retention on)."""
    recheck_interval: float = 2.0
    """How often each process re-reads the heads of the groups its streams follow, in case
    a wake-up was lost (0: never)."""
    postgres_pool_size: int = 16
    trusted_proxies: tuple[str, ...] = ()
    """Addresses of reverse proxies whose ``X-Forwarded-For`` and ``X-Forwarded-Proto`` name
    the client; from anyone else (and by default) the connection's own address counts."""
    log_level: str = "info"
    limits: Limits = field(default_factory=Limits)

    @property
    def public_origin(self) -> str:
        return self.origin or f"http://{self.host}:{self.port}"

    @property
    def prunes(self) -> bool:
        return self.retention_seconds > 0 or self.max_retention_seconds > 0

"""The ASGI application: routes, the stream, JSON errors, and the store's lifetime."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import WebSocketRoute

from .budget import BodyBudget
from .config import Config
from .errors import BucketKind, RelayError
from .fanout import Fanout
from .identity import IDENTITY_ROUTES, IdentityStore
from .notify import Notifier
from .ratelimit import RateLimiter
from .relay import CursorBook, Relay, TokenCache, now_ms
from .replies import reply
from .routes import ROUTES
from .sqlstore import Backend, SqlStore
from .stream import stream

log = logging.getLogger("ping_relay")


def open_backend(config: Config, notifier: Notifier) -> Backend:
    """The backend for ``config.db``: ``sqlite:///path`` or ``postgresql://...``."""
    url = config.db
    if url.startswith("sqlite:"):
        from .backend_sqlite import SqliteBackend, sqlite_path

        return SqliteBackend(sqlite_path(url), notifier.notify)
    if url.startswith(("postgresql://", "postgres://")):
        from .backend_postgres import PostgresBackend

        return PostgresBackend(url, notifier.notify, notifier.notify_all, config.postgres_pool_size)
    raise ValueError(f"unsupported database URL {url!r}: use sqlite:///path or postgresql://...")


def _database_down(exc: Exception) -> bool:
    """An error of the database connection (PostgreSQL restarting, the network), not a bug."""
    try:
        import psycopg
    except ImportError:  # pragma: no cover - psycopg is a dependency
        return False
    return isinstance(exc, psycopg.OperationalError)


async def relay_error(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, RelayError):
        return await internal_error(request, exc)
    return reply(exc.body(), exc.status, exc.headers)


async def http_error(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, HTTPException):
        return await internal_error(request, exc)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return reply({"error": code, "detail": str(exc.detail)}, exc.status_code, exc.headers)


async def internal_error(request: Request, exc: Exception) -> Response:
    if _database_down(exc):
        log.warning("the database did not answer: %s", exc)
        return reply(
            {"error": "unavailable", "detail": "the database did not answer; retry"}, 503, {"Retry-After": "1"}
        )
    log.error("request failed", exc_info=exc)
    return reply({"error": "internal", "detail": "internal error"}, 500)


async def _maintain_forever(relay: Relay) -> None:
    """Every ``--prune-interval``: prune the log (when retention is on), delete expired
    Welcomes (``--welcome-ttl``), and drop rate buckets that are full again."""
    config = relay.config
    while True:
        await asyncio.sleep(config.prune_interval)
        now = now_ms()
        try:
            if config.prunes:
                deleted = await relay.store.prune(
                    now, int(config.retention_seconds * 1000), int(config.max_retention_seconds * 1000)
                )
                if deleted:
                    log.info("pruned %d log entries", deleted)
            if config.welcome_ttl_seconds > 0:
                expired = await relay.store.prune_welcomes(now - int(config.welcome_ttl_seconds * 1000))
                if expired:
                    log.info("deleted %d expired Welcomes", expired)
            await relay.store.sweep_buckets(now)
        except Exception:
            log.exception("pruning failed")


async def _flush_cursors_forever(relay: Relay) -> None:
    while True:
        await asyncio.sleep(relay.config.cursor_flush_interval)
        cursors = relay.cursors.take()
        try:
            await relay.store.record_cursors(cursors)
        except Exception:
            log.warning("storing cursors failed; they are reported again", exc_info=True)
            for (group_id, device_id), seq in cursors.items():
                relay.cursors.report(group_id, device_id, seq)


async def _recheck_forever(relay: Relay) -> None:
    """Re-read what the wake-ups would have said, in case one was lost (e.g. a NOTIFY sent
    while this process's LISTEN connection was down): each followed group's head, each
    connected device's newest Welcome and its stream owner. One read per interval."""
    while True:
        await asyncio.sleep(relay.config.recheck_interval)
        try:
            streams = dict(relay.streams)
            found = await relay.store.recheck(list(relay.fanout.feeds), list(streams))
            relay.fanout.recheck(found.heads)
            for device_id, connection in streams.items():
                connection.recheck(found.mailboxes.get(device_id), found.owners.get(device_id))
        except Exception:
            log.warning("recheck failed", exc_info=True)


def create_app(config: Config) -> Starlette:
    notifier = Notifier()
    lim = config.limits
    store = SqlStore(open_backend(config, notifier), lim)
    relay = Relay(
        config=config,
        store=store,
        notifier=notifier,
        device_limiter=RateLimiter(lim.rate_per_second, lim.rate_burst),
        anon_limiter=RateLimiter(lim.anon_rate_per_second, lim.anon_burst),
        auth_failures=RateLimiter(lim.auth_failure_rate_per_second, lim.auth_failure_burst),
        bodies=BodyBudget(lim.body_bytes_in_flight, lim.body_bytes_in_flight_per_client),
        uploads=RateLimiter(lim.upload_bytes_per_second, lim.upload_burst_bytes),
        mirrors={
            BucketKind.CLAIM_PAIR: RateLimiter(lim.claim_rate_per_pair, lim.claim_burst_per_pair),
            BucketKind.CLAIM_TARGET: RateLimiter(lim.claim_rate_per_target, lim.claim_burst_per_target),
            BucketKind.LAST_RESORT: RateLimiter(lim.last_resort_rate, lim.last_resort_burst),
            BucketKind.GROUPS: RateLimiter(lim.group_rate_per_second, lim.group_burst),
        },
        downloads=RateLimiter(lim.download_bytes_per_second, lim.download_burst_bytes),
        fanout=Fanout(store, notifier, lim),
        identities=IdentityStore(store.backend, lim.max_devices_per_user),
        cursors=CursorBook(config.prunes),
        tokens=TokenCache(max_age_s=config.recheck_interval or 2.0),
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await store.start()
        tasks: list[asyncio.Task[None]] = []
        tasks.append(asyncio.create_task(_maintain_forever(relay)))
        if config.prunes:
            tasks.append(asyncio.create_task(_flush_cursors_forever(relay)))
        if config.recheck_interval > 0:
            tasks.append(asyncio.create_task(_recheck_forever(relay)))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await relay.fanout.close()
            await store.close()

    app = Starlette(
        routes=[*ROUTES, *IDENTITY_ROUTES, WebSocketRoute("/v1/stream", stream)],
        exception_handlers={RelayError: relay_error, HTTPException: http_error, 500: internal_error},
        lifespan=lifespan,
    )
    app.router.redirect_slashes = False  # a wrong path is a 404, never a redirect
    app.state.relay = relay
    return app

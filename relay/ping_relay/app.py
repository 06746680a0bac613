"""The ASGI application: routes, the stream, JSON errors, and the store's lifetime."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import WebSocketRoute

from .config import Config
from .errors import RelayError
from .notify import Notifier
from .ratelimit import RateLimiter
from .relay import Relay
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


async def relay_error(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, RelayError):
        return await internal_error(request, exc)
    return JSONResponse(exc.body(), status_code=exc.status, headers={**exc.headers, "Cache-Control": "no-store"})


async def http_error(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, HTTPException):
        return await internal_error(request, exc)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return JSONResponse(
        {"error": code, "detail": str(exc.detail)}, status_code=exc.status_code, headers=dict(exc.headers or {})
    )


async def internal_error(request: Request, exc: Exception) -> Response:
    return JSONResponse({"error": "internal", "detail": "internal error"}, status_code=500)


async def _prune_forever(relay: Relay) -> None:
    config = relay.config
    while True:
        await asyncio.sleep(config.prune_interval)
        try:
            cutoff = int((time.time() - config.retention_seconds) * 1000)
            deleted = await relay.store.prune(cutoff)
            if deleted:
                log.info("pruned %d log entries", deleted)
        except Exception:
            log.exception("pruning failed")


def create_app(config: Config) -> Starlette:
    notifier = Notifier()
    store = SqlStore(open_backend(config, notifier))
    lim = config.limits
    relay = Relay(
        config=config,
        store=store,
        notifier=notifier,
        device_limiter=RateLimiter(lim.rate_per_second, lim.rate_burst),
        anon_limiter=RateLimiter(lim.anon_rate_per_second, lim.anon_burst),
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await store.start()
        pruner = asyncio.create_task(_prune_forever(relay)) if config.retention_seconds > 0 else None
        try:
            yield
        finally:
            if pruner is not None:
                pruner.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await pruner
            await store.close()

    app = Starlette(
        routes=[*ROUTES, WebSocketRoute("/v1/stream", stream)],
        exception_handlers={RelayError: relay_error, HTTPException: http_error, 500: internal_error},
        lifespan=lifespan,
    )
    app.router.redirect_slashes = False  # a wrong path is a 404, never a redirect
    app.state.relay = relay
    return app

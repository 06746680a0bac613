"""``python -m ping_relay``: parse the command line, build the app, run it under uvicorn."""

from __future__ import annotations

import argparse
import dataclasses
import logging
from collections.abc import Sequence

import uvicorn

from .app import create_app
from .config import Config, Limits
from .connections import Deadlines, guarded_protocol
from .headers import SecurityHeaders
from .static import WithStatic, parse_mount


def _parser() -> argparse.ArgumentParser:
    defaults, limits = Config(), Limits()
    p = argparse.ArgumentParser(prog="python -m ping_relay", description="The ping-web relay (docs/relay.md).")
    p.add_argument("--db", default=defaults.db, help="sqlite:///path.db (default %(default)s) or postgresql://...")
    p.add_argument("--host", default=defaults.host)
    p.add_argument("--port", type=int, default=defaults.port)
    p.add_argument("--origin", default="", help="public origin bound into signatures (default http://HOST:PORT)")
    p.add_argument("--challenge-ttl", type=float, default=defaults.challenge_ttl, metavar="SECONDS")
    p.add_argument("--token-ttl", type=float, default=defaults.token_ttl, metavar="SECONDS")
    p.add_argument(
        "--retention", type=float, default=0.0, metavar="SECONDS", help="prune acknowledged log entries older than this"
    )
    p.add_argument(
        "--max-retention", type=float, default=0.0, metavar="SECONDS", help="prune every log entry older than this"
    )
    p.add_argument(
        "--welcome-ttl",
        type=float,
        default=defaults.welcome_ttl_seconds,
        metavar="SECONDS",
        help="delete Welcomes not acknowledged within this (0: never)",
    )
    p.add_argument("--prune-interval", type=float, default=defaults.prune_interval, metavar="SECONDS")
    p.add_argument("--cursor-flush-interval", type=float, default=defaults.cursor_flush_interval, metavar="SECONDS")
    p.add_argument("--recheck-interval", type=float, default=defaults.recheck_interval, metavar="SECONDS")
    p.add_argument("--postgres-pool-size", type=int, default=defaults.postgres_pool_size)
    p.add_argument(
        "--trusted-proxy",
        action="append",
        default=[],
        metavar="ADDRESS",
        help="a reverse proxy whose X-Forwarded-For names the client (repeatable; an IP or a network)",
    )
    p.add_argument("--log-level", default=defaults.log_level, choices=["critical", "error", "warning", "info", "debug"])
    p.add_argument(
        "--static",
        action="append",
        default=[],
        metavar="/PREFIX=DIR",
        help="also serve DIR's files at /PREFIX (repeatable; never under /v1), e.g. the app that uses the relay",
    )
    p.add_argument("--index", default=None, metavar="PATH", help="where / redirects to when --static is given")
    for f in dataclasses.fields(Limits):
        value = getattr(limits, f.name)
        p.add_argument(
            "--" + f.name.replace("_", "-"), type=type(value), default=value, dest="limit_" + f.name, metavar="N"
        )
    return p


def config_from_args(argv: Sequence[str] | None = None) -> Config:
    return _config(_parser().parse_args(argv))


def _config(args: argparse.Namespace) -> Config:
    limits = Limits(**{f.name: getattr(args, "limit_" + f.name) for f in dataclasses.fields(Limits)})
    return Config(
        db=args.db,
        host=args.host,
        port=args.port,
        origin=args.origin,
        challenge_ttl=args.challenge_ttl,
        token_ttl=args.token_ttl,
        retention_seconds=args.retention,
        max_retention_seconds=args.max_retention,
        welcome_ttl_seconds=args.welcome_ttl,
        prune_interval=args.prune_interval,
        cursor_flush_interval=args.cursor_flush_interval,
        recheck_interval=args.recheck_interval,
        postgres_pool_size=args.postgres_pool_size,
        trusted_proxies=tuple(args.trusted_proxy),
        log_level=args.log_level,
        limits=limits,
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    config = _config(args)
    try:
        mounts = [parse_mount(text) for text in args.static]
    except ValueError as exc:
        parser.error(str(exc))
    logging.basicConfig(level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(config)
    lim = config.limits
    uvicorn.run(
        SecurityHeaders(WithStatic(app, mounts, args.index, origin=config.public_origin) if mounts else app),
        host=config.host,
        port=config.port,
        http=guarded_protocol(Deadlines(lim.header_timeout, lim.body_timeout, lim.max_connections)),
        loop="uvloop",
        ws="websockets-sansio",
        ws_max_size=lim.ws_max_frame_bytes,
        ws_ping_interval=lim.ws_ping_interval,
        ws_ping_timeout=lim.ws_ping_interval,
        ws_per_message_deflate=False,
        lifespan="on",
        proxy_headers=bool(config.trusted_proxies),
        forwarded_allow_ips=list(config.trusted_proxies) or None,
        log_level=config.log_level,
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=5,
    )

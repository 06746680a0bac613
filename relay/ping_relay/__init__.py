"""ping_relay: the delivery service ping_web devices talk through (protocol: docs/relay.md)."""

__version__ = "0.1.0"
PROTOCOL_VERSION = 1

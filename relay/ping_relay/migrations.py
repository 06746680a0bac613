"""Numbered schema migrations, applied in order at start, each in its own transaction.

``schema_version`` holds one row per applied migration. A migration is never edited once
released: a schema change is a new number. The SQL is written once with two
substitutions, ``{blob}`` (SQLite ``BLOB``, PostgreSQL ``BYTEA``) and ``{id}`` (an
auto-increment primary key).
"""

from __future__ import annotations

from typing import Final, Protocol

DIALECT_TYPES: Final = {
    "sqlite": {"blob": "BLOB", "id": "INTEGER PRIMARY KEY AUTOINCREMENT"},
    "postgres": {"blob": "BYTEA", "id": "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY"},
}

MIGRATIONS: Final[list[list[str]]] = [
    # 1: devices, auth, KeyPackages, groups, the log, the Welcome mailbox
    [
        """CREATE TABLE devices (
            device_id {blob} PRIMARY KEY,
            user_id {blob} NOT NULL,
            public_key {blob} NOT NULL,
            registered_at_ms BIGINT NOT NULL,
            last_resort_claims BIGINT NOT NULL DEFAULT 0)""",
        "CREATE INDEX devices_by_user ON devices (user_id, device_id)",
        """CREATE TABLE challenges (
            challenge {blob} PRIMARY KEY,
            device_id {blob} NOT NULL,
            expires_at_ms BIGINT NOT NULL)""",
        "CREATE INDEX challenges_by_expiry ON challenges (expires_at_ms)",
        """CREATE TABLE tokens (
            token_hash {blob} PRIMARY KEY,
            device_id {blob} NOT NULL,
            expires_at_ms BIGINT NOT NULL)""",
        "CREATE INDEX tokens_by_expiry ON tokens (expires_at_ms)",
        """CREATE TABLE key_packages (
            id {id},
            device_id {blob} NOT NULL,
            data {blob} NOT NULL,
            data_hash {blob} NOT NULL,
            last_resort SMALLINT NOT NULL,
            published_at_ms BIGINT NOT NULL)""",
        "CREATE INDEX key_packages_by_device ON key_packages (device_id, last_resort, id)",
        "CREATE UNIQUE INDEX key_packages_one_last_resort ON key_packages (device_id) WHERE last_resort = 1",
        "CREATE UNIQUE INDEX key_packages_unique ON key_packages (device_id, data_hash)",
        """CREATE TABLE conversations (
            group_id {blob} PRIMARY KEY,
            creator_device {blob} NOT NULL,
            epoch BIGINT NOT NULL,
            head_seq BIGINT NOT NULL,
            pruned_through BIGINT NOT NULL,
            created_at_ms BIGINT NOT NULL)""",
        """CREATE TABLE members (
            group_id {blob} NOT NULL,
            device_id {blob} NOT NULL,
            from_seq BIGINT NOT NULL,
            removed_seq BIGINT,
            PRIMARY KEY (group_id, device_id))""",
        """CREATE TABLE log (
            group_id {blob} NOT NULL,
            seq BIGINT NOT NULL,
            kind SMALLINT NOT NULL,
            epoch BIGINT NOT NULL,
            sender_device {blob} NOT NULL,
            sender_seq {blob} NOT NULL,
            envelope {blob} NOT NULL,
            received_at_ms BIGINT NOT NULL,
            PRIMARY KEY (group_id, seq),
            UNIQUE (group_id, sender_device, sender_seq))""",
        "CREATE INDEX log_by_time ON log (received_at_ms)",
        """CREATE TABLE roster_changes (
            group_id {blob} NOT NULL,
            seq BIGINT NOT NULL,
            added {blob} NOT NULL,
            removed {blob} NOT NULL,
            signature {blob} NOT NULL,
            PRIMARY KEY (group_id, seq))""",
        """CREATE TABLE welcomes (
            group_id {blob} NOT NULL,
            commit_seq BIGINT NOT NULL,
            envelope {blob} NOT NULL,
            PRIMARY KEY (group_id, commit_seq))""",
        """CREATE TABLE mailbox (
            id {id},
            device_id {blob} NOT NULL,
            group_id {blob} NOT NULL,
            commit_seq BIGINT NOT NULL,
            created_at_ms BIGINT NOT NULL)""",
        "CREATE INDEX mailbox_by_device ON mailbox (device_id, id)",
        "CREATE INDEX mailbox_by_welcome ON mailbox (group_id, commit_seq)",
    ],
    # 2: several processes on one database: the shared write-rate bucket of each device, the
    # process and connection that owns each device's stream, and each member's reported cursor
    [
        """CREATE TABLE rate_buckets (
            device_id {blob} PRIMARY KEY,
            tokens DOUBLE PRECISION NOT NULL,
            updated_ms BIGINT NOT NULL)""",
        """CREATE TABLE streams (
            device_id {blob} PRIMARY KEY,
            owner {blob} NOT NULL,
            since_ms BIGINT NOT NULL)""",
        "ALTER TABLE members ADD COLUMN acked_seq BIGINT NOT NULL DEFAULT 0",
    ],
    # 3: quotas and bounded mailboxes (issue 17): the log bytes each group holds and each
    # device sent, and each mailbox entry's Welcome size, counted from what is stored now;
    # how many of a device's regular KeyPackages were claimed (to tell it when it runs low)
    [
        "ALTER TABLE conversations ADD COLUMN stored_bytes BIGINT NOT NULL DEFAULT 0",
        "ALTER TABLE devices ADD COLUMN stored_bytes BIGINT NOT NULL DEFAULT 0",
        "ALTER TABLE devices ADD COLUMN key_packages_claimed BIGINT NOT NULL DEFAULT 0",
        "ALTER TABLE mailbox ADD COLUMN bytes BIGINT NOT NULL DEFAULT 0",
        """UPDATE conversations SET stored_bytes = s.total
            FROM (SELECT group_id, SUM(LENGTH(envelope)) AS total FROM log GROUP BY group_id) s
            WHERE conversations.group_id = s.group_id""",
        """UPDATE devices SET stored_bytes = s.total
            FROM (SELECT sender_device, SUM(LENGTH(envelope)) AS total FROM log GROUP BY sender_device) s
            WHERE devices.device_id = s.sender_device""",
        """UPDATE mailbox SET bytes = s.size
            FROM (SELECT group_id, commit_seq, LENGTH(envelope) AS size FROM welcomes) s
            WHERE mailbox.group_id = s.group_id AND mailbox.commit_seq = s.commit_seq""",
        "CREATE INDEX mailbox_by_time ON mailbox (created_at_ms)",
    ],
    # 4: users' device logs (each entry once per seq: the primary key is the append's
    # compare-and-swap), revoked devices, and link slots for new devices
    [
        """CREATE TABLE device_logs (
            user_id {blob} NOT NULL,
            seq BIGINT NOT NULL,
            entry {blob} NOT NULL,
            entry_hash {blob} NOT NULL,
            PRIMARY KEY (user_id, seq))""",
        "ALTER TABLE devices ADD COLUMN revoked_at_ms BIGINT",
        """CREATE TABLE links (
            link_id {blob} PRIMARY KEY,
            user_id {blob} NOT NULL,
            request {blob},
            answer {blob},
            expires_at_ms BIGINT NOT NULL)""",
        "CREATE INDEX links_by_user ON links (user_id)",
    ],
    # 5: each group's newest GroupInfo (kept with the commit that carried it), for devices
    # rejoining or joining by external commit
    [
        """CREATE TABLE group_infos (
            group_id {blob} PRIMARY KEY,
            epoch BIGINT NOT NULL,
            group_info {blob} NOT NULL)""",
    ],
]

LATEST: Final = len(MIGRATIONS)


class DdlCursor(Protocol):
    def one(self, sql: str, *params: object) -> tuple[object, ...] | None: ...

    def run(self, sql: str, *params: object) -> int: ...


def pending(tx: DdlCursor) -> int:
    """The schema version now (0: empty database)."""
    row = tx.one("SELECT MAX(version) FROM schema_version")
    value = row[0] if row else None
    return value if isinstance(value, int) else 0


def apply(tx: DdlCursor, dialect: str, version: int, now_ms: int) -> None:
    """Apply migration ``version`` (1-based) and record it, inside the caller's transaction."""
    types = DIALECT_TYPES[dialect]
    for statement in MIGRATIONS[version - 1]:
        tx.run(statement.format(**types))
    tx.run("INSERT INTO schema_version (version, applied_at_ms) VALUES (?, ?)", version, now_ms)


SCHEMA_VERSION_TABLE: Final = (
    "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied_at_ms BIGINT NOT NULL)"
)

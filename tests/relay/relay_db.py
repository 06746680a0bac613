"""Reading a relay's database from the tests (SQLite file or PostgreSQL schema)."""

from __future__ import annotations

from typing import Any


def dump(db: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, sorted: the database content to compare."""
    if db.startswith("sqlite:"):
        import sqlite3

        conn = sqlite3.connect(db.removeprefix("sqlite:///"))
        try:
            tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
            return {t: sorted(conn.execute(f"SELECT * FROM {t}").fetchall(), key=repr) for t in tables}
        finally:
            conn.close()
    import psycopg

    with psycopg.connect(db, autocommit=True) as conn:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema() ORDER BY 1"
            )
        ]
        return {t: sorted(conn.execute(f"SELECT * FROM {t}").fetchall(), key=repr) for t in tables}


def execute(db: str, sql: str, *params: Any) -> None:
    """Run one statement with ``?`` placeholders against a relay's database (a test's
    stand-in for rows an older relay version may have stored)."""
    if db.startswith("sqlite:"):
        import sqlite3

        conn = sqlite3.connect(db.removeprefix("sqlite:///"))
        try:
            conn.execute(sql, params)
            conn.commit()
        finally:
            conn.close()
        return
    import psycopg

    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(sql.replace("?", "%s"), params)

"""
``stomptw-store``: look at a message store, and copy what is readable out of
a damaged one.

    stomptw-store check DIR
    stomptw-store salvage DIR NEW_DIR

``check`` opens ``DIR/stomptw.sqlite3`` read-only, runs SQLite's integrity
check and counts what it holds (exit status 1 when it is damaged).
``salvage`` reads every message and durable subscription it can, one by one
where a whole read fails, and writes them to a new store in ``NEW_DIR``,
which a broker then opens with ``--data-dir NEW_DIR``. The damaged file is
never written to. Stop the broker first: a store in use is locked.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
from collections.abc import Iterator
from typing import TextIO

from stomptw.storeformat import DB_NAME, SCHEMA, SCHEMA_VERSION

__all__ = ["main"]

_MESSAGE_COLUMNS = "key, owner, message_id, destination, headers, body, delivery_count, expires"
#: Give up after this many keys in a row that cannot be read.
_GAP = 10_000


def _open(directory: str) -> sqlite3.Connection:
    path = os.path.join(directory, DB_NAME)
    if not os.path.exists(path):
        raise SystemExit(f"stomptw-store: no message store at {path}")
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


def _valid(row: tuple) -> bool:
    """Whether a message row holds what the broker needs to load it."""
    key, owner, message_id, destination, headers, body, count, expires = row
    try:
        json.loads(headers)
    except (TypeError, ValueError):
        return False
    return (
        isinstance(key, int)
        and all(isinstance(v, str) for v in (owner, message_id, destination))
        and isinstance(body, bytes | str)
        and isinstance(count, int)
        and isinstance(expires, int)
    )


def _messages(conn: sqlite3.Connection, out: dict) -> Iterator[tuple]:
    """Every readable message row: all at once if that works, else key by key."""
    try:
        rows = conn.execute(f"SELECT {_MESSAGE_COLUMNS} FROM messages ORDER BY key").fetchall()
    except sqlite3.DatabaseError as e:
        out["whole_read_failed"] = str(e)
    else:
        yield from rows
        return
    # Key by key: jump to the next key the b-tree can reach; where a page
    # cannot be read, step over one key at a time until past it.
    key, failing = 0, 0
    while failing < _GAP:
        try:
            row = conn.execute(
                f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE key > ? ORDER BY key LIMIT 1",
                (key,),
            ).fetchone()
        except sqlite3.DatabaseError:
            out["unreadable"] += 1
            failing += 1
            key += 1
            continue
        if row is None:
            return
        failing = 0
        yield row
        key = row[0]


def _subscriptions(conn: sqlite3.Connection, out: dict) -> list[tuple]:
    try:
        return conn.execute(
            "SELECT owner, client_id, name, destination FROM subscriptions"
        ).fetchall()
    except sqlite3.DatabaseError as e:
        out["subscriptions_failed"] = str(e)
        return []


def check(directory: str, out: TextIO) -> int:
    """Print what the store holds and whether SQLite finds it sound; 0 if it does."""
    conn = _open(directory)
    try:
        try:
            verdict = [row[0] for row in conn.execute("PRAGMA integrity_check")]
        except sqlite3.DatabaseError as e:
            verdict = [str(e)]
        counts = {}
        for table in ("messages", "subscriptions"):
            try:
                counts[table] = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            except sqlite3.DatabaseError as e:
                counts[table] = f"unreadable ({e})"
    finally:
        conn.close()
    sound = verdict == ["ok"]
    out.write(
        f"{os.path.join(directory, DB_NAME)}: "
        + ("sound" if sound else "damaged: " + "; ".join(verdict[:5]))
        + f"; {counts['messages']} message(s), {counts['subscriptions']} durable subscription(s)\n"
    )
    return 0 if sound else 1


def salvage(directory: str, target: str, out: TextIO) -> int:
    """Copy what is readable into a new store in ``target``; 0 if anything was read."""
    new_path = os.path.join(target, DB_NAME)
    if os.path.exists(new_path):
        raise SystemExit(f"stomptw-store: {new_path} exists; salvage into an empty directory")
    found = {"unreadable": 0, "invalid": 0}
    try:
        conn = _open(directory)
        messages = []
        for row in _messages(conn, found):
            if _valid(row):
                messages.append(row)
            else:
                found["invalid"] += 1
        subscriptions = _subscriptions(conn, found)
        conn.close()
    except sqlite3.DatabaseError as e:
        # Not even a database: nothing to read.
        found["whole_read_failed"] = str(e)
        messages, subscriptions = [], []
    os.makedirs(target, exist_ok=True)
    new = sqlite3.connect(new_path)
    with new:
        new.executescript(SCHEMA)
        new.execute("INSERT INTO meta(name, value) VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        new.execute("INSERT INTO meta(name, value) VALUES ('closed', '1')")
        new.executemany(
            f"INSERT OR IGNORE INTO messages({_MESSAGE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            messages,
        )
        new.executemany(
            "INSERT OR IGNORE INTO subscriptions(owner, client_id, name, destination) "
            "VALUES (?, ?, ?, ?)",
            subscriptions,
        )
    new.close()
    out.write(
        f"salvaged {len(messages)} message(s) and {len(subscriptions)} durable "
        f"subscription(s) into {new_path}"
        + (f"; {found['unreadable']} key(s) unreadable" if found["unreadable"] else "")
        + (f"; {found['invalid']} row(s) incomplete" if found["invalid"] else "")
        + (
            f" (the whole read failed: {found['whole_read_failed']})"
            if "whole_read_failed" in found
            else ""
        )
        + "\n"
    )
    return 0 if messages or subscriptions else 1


def main(argv: list[str] | None = None, out: TextIO = sys.stdout) -> int:
    """The ``stomptw-store`` command."""
    parser = argparse.ArgumentParser(prog="stomptw-store", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    checking = commands.add_parser("check", help="integrity check and counts")
    checking.add_argument("directory")
    salvaging = commands.add_parser("salvage", help="copy what is readable into a new store")
    salvaging.add_argument("directory")
    salvaging.add_argument("target")
    args = parser.parse_args(argv)
    if args.command == "check":
        return check(args.directory, out)
    return salvage(args.directory, args.target, out)


if __name__ == "__main__":
    raise SystemExit(main())

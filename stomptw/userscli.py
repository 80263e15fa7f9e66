"""
``stomptw-users``: manage a users file (:mod:`stomptw.users`).

::

    stomptw-users add FILE NAME [--group G ...] [--tag T ...]
    stomptw-users passwd FILE NAME
    stomptw-users remove FILE NAME
    stomptw-users list FILE

Passwords are read from the terminal (asked twice), or as one line from
standard input when it is not a terminal; never from the command line,
where other users of the machine could see them. Send the broker SIGHUP to
make it read the changed file.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from collections.abc import Sequence
from typing import TextIO

from stomptw.users import (
    User,
    UsersFileError,
    check_name,
    hash_password,
    read_users,
    write_users,
)

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stomptw-users",
        description="Manage a stomptw users file (argon2id password hashes, groups, tags). "
        "Passwords are read from the terminal, or from standard input when it is not one.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add = commands.add_parser("add", help="add a user (creates the file if needed)")
    passwd = commands.add_parser("passwd", help="change a user's password")
    remove = commands.add_parser("remove", help="remove a user")
    listing = commands.add_parser("list", help="list the users, their groups and tags")
    groups = commands.add_parser("set", help="replace a user's groups and tags")
    for sub in (add, passwd, remove, listing, groups):
        sub.add_argument("file", metavar="FILE", help="the users file")
    for sub in (add, passwd, remove, groups):
        sub.add_argument("name", metavar="NAME", help="the user name")
    for sub in (add, groups):
        sub.add_argument(
            "--group", action="append", default=[], metavar="GROUP", help="a group (repeatable)"
        )
        sub.add_argument(
            "--tag",
            action="append",
            default=[],
            metavar="TAG",
            help="a tag such as administrator (repeatable)",
        )
    return parser


def _password(stdin: TextIO, err: TextIO) -> str:
    """A new password, from the terminal (twice) or one line of ``stdin``."""
    if stdin.isatty():
        first = getpass.getpass("Password: ")
        if first != getpass.getpass("Password (again): "):
            raise UsersFileError("the passwords differ")
    else:
        first = stdin.readline().rstrip("\r\n")
    if not first:
        raise UsersFileError("empty password")
    return first


def _load(path: str, must_exist: bool = True) -> dict[str, User]:
    if not must_exist and not os.path.exists(path):
        return {}
    return read_users(path)


def run(
    argv: Sequence[str],
    stdin: TextIO = sys.stdin,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
) -> int:
    """Run ``stomptw-users`` with ``argv``; the exit status."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "list":
            for user in sorted(_load(args.file).values(), key=lambda u: u.name):
                out.write(
                    f"{user.name}\tgroups={','.join(user.groups) or '-'}"
                    f"\ttags={','.join(user.tags) or '-'}\n"
                )
            return 0
        name = check_name(args.name)
        users = _load(args.file, must_exist=args.command != "add")
        if args.command == "add":
            if name in users:
                raise UsersFileError(f"user {name!r} exists already (use passwd or set)")
            users[name] = User(
                name, hash_password(_password(stdin, err)), tuple(args.group), tuple(args.tag)
            )
            done = "added"
        elif name not in users:
            raise UsersFileError(f"{args.file}: no user {name!r}")
        elif args.command == "passwd":
            old = users[name]
            users[name] = User(name, hash_password(_password(stdin, err)), old.groups, old.tags)
            done = "password changed"
        elif args.command == "set":
            old = users[name]
            users[name] = User(name, old.password, tuple(args.group), tuple(args.tag))
            done = "groups and tags set"
        else:
            del users[name]
            done = "removed"
        write_users(args.file, users.values())
    except UsersFileError as e:
        err.write(f"stomptw-users: {e}\n")
        return 1
    except OSError as e:
        err.write(f"stomptw-users: {args.file}: {e.strerror}\n")
        return 1
    err.write(f"{name}: {done}. Send the broker SIGHUP to apply it.\n")
    return 0


def main() -> None:
    """The console script."""
    sys.exit(run(sys.argv[1:]))


if __name__ == "__main__":
    main()

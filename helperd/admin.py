"""The host admin's CLI (run as root): API tokens through the helper, and the audit trail.

It speaks the same protocol as the frontend; as root it needs no token. A new token is
printed exactly once, on stdout, and appears nowhere else; so is the package's first token
(`initial-token`), whose file is deleted once it has been printed.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import math
import os
import stat
import sys
import uuid
from typing import Any

from helperd import audit, config, doctor
from helperd.audit import cli as audit_cli
from protocol import ops, rules
from protocol.client import HelperClient
from protocol.config import DEFAULT_CONFIG, ConfigError
from protocol.errors import LwpError

# The first admin token, written by the package's postinst (lwp-first-token), root only.
INITIAL_TOKEN = "initial-admin-token"  # noqa: S105 (a file name)
REMINDER = ("lwp-admin: {path} still holds the first admin token: `lwp-admin initial-token` "
            "prints it and deletes the file")


class InitialTokenError(Exception):
    """The first-token file is missing or not the root-only regular file postinst made."""


def read_initial_token(path: str) -> str:
    """The token in `path`: a regular file, not a link, owned by root, not group/other-readable."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise InitialTokenError(f"{path} does not exist: it was read and deleted already. "
                                "`lwp-admin token add` makes a new admin token") from None
    except OSError as exc:
        raise InitialTokenError(f"{path}: {exc.strerror} (a symbolic link is refused)") from None
    with os.fdopen(fd) as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_uid != 0 or st.st_mode & 0o077:
            raise InitialTokenError(f"{path} is not a root-only regular file (0600 root); not "
                                    "trusted: revoke the first token and make a new one")
        token = f.read(1024).strip()
    if not token:
        raise InitialTokenError(f"{path} is empty")
    return token


def initial_token(path: str, keep: bool) -> int:
    """Print the first token on stdout, then delete its file unless `keep`."""
    try:
        token = read_initial_token(path)
    except InitialTokenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        print(token, flush=True)
    except OSError as exc:  # nobody got it (a closed pipe, a full disk): keep the file
        print(f"error: the token could not be written ({exc.strerror}); {path} kept",
              file=sys.stderr)
        return 1
    if keep:
        print(f"lwp-admin: {path} kept (--keep); delete it once the token is stored elsewhere",
              file=sys.stderr)
    else:
        os.unlink(path)
        print(f"lwp-admin: {path} deleted; the token stays valid until revoked "
              "(`lwp-admin token list`, `lwp-admin token revoke ID`)", file=sys.stderr)
    return 0


def _remind(state_dir: str) -> None:
    path = os.path.join(state_dir, INITIAL_TOKEN)
    if os.path.lexists(path):
        print(REMINDER.format(path=path), file=sys.stderr)


def _expires_days(text: str) -> float:
    """--expires-days: a finite positive number of days (inf/nan would never expire)."""
    try:
        days = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (math.isfinite(days) and 0 < days <= 36500):
        raise argparse.ArgumentTypeError("must be more than 0 and at most 36500 days")
    return days


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _request(args: argparse.Namespace) -> ops.Request:
    if args.command == "add":
        expires = None
        if args.expires_days is not None:
            expires = (datetime.datetime.now(datetime.UTC)
                       + datetime.timedelta(days=args.expires_days)).timestamp()
        containers = None if args.containers is None else tuple(args.containers)
        return ops.CreateToken(None, args.description, args.scope, expires, containers)
    if args.command == "list":
        return ops.ListTokens()
    return ops.RevokeToken(id=args.id)


async def _call(socket_path: str, request: ops.Request) -> Any:
    client = HelperClient(socket_path)
    try:
        return await client.call(ops.Envelope(uuid.uuid4().hex, None, "local", request))
    finally:
        await client.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lwp-admin", description=__doc__)
    parser.add_argument("--config", help=f"configuration file (default {DEFAULT_CONFIG})")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    area = parser.add_subparsers(dest="area", required=True)
    token = area.add_parser("token", help="manage API tokens").add_subparsers(
        dest="command", required=True)
    add = token.add_parser("add", help="create a token and print it once")
    add.add_argument("--scope", choices=rules.SCOPES, default="admin")
    add.add_argument("--description", default="")
    add.add_argument("--expires-days", type=_expires_days)
    add.add_argument("--containers", action="append", metavar="PATTERN",
                     help="limit the token to containers matching PATTERN (* and ? stand for "
                          "characters); repeat for more; absent: every container")
    token.add_parser("list", help="list tokens (never their secrets)")
    revoke = token.add_parser("revoke", help="revoke a token by id")
    revoke.add_argument("id", type=int)
    first = area.add_parser(
        "initial-token", help="print the first admin token (made by the package) and delete "
        "its file")
    first.add_argument("--keep", action="store_true", help="print it but keep the file")
    area.add_parser("doctor", help="check what makes containers work or fail on this host "
                    "(exit 1 if there is a problem)")
    audit_cli.add_parser(area)
    args = parser.parse_args(argv)
    try:
        cfg = config.load(args.config)
        if args.area == "initial-token":
            return initial_token(os.path.join(cfg.state_dir, INITIAL_TOKEN), args.keep)
        _remind(cfg.state_dir)
        if args.area == "audit":
            return audit_cli.run(args, cfg)
        if args.area == "doctor":  # here, not through the helper: it answers when that is down
            return print_doctor(doctor.report(cfg), args.json)
        result = asyncio.run(_call(cfg.socket, _request(args)))
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    except LwpError as exc:
        print(f"error: {exc.message} ({exc.code})", file=sys.stderr)
        return 1
    except (audit.AuditError, OSError) as exc:
        print(f"error: the audit trail cannot be read: {exc}", file=sys.stderr)
        return 1
    _print(args, result)
    return 0


def print_doctor(findings: list[dict[str, Any]], as_json: bool = False) -> int:
    """Print the host check; 1 if any finding is a problem."""
    if as_json:
        print(json.dumps(findings))
    for f in findings if not as_json else ():
        fix = f"\n{'':10}-> {f['fix']}" if f["fix"] else ""
        print(f"{f['status'].upper():8}  {f['check']}: {f['detail']}{fix}")
    return 1 if any(f["status"] == doctor.PROBLEM for f in findings) else 0


def _limited(token: dict[str, Any]) -> str:
    patterns = token.get("containers")
    return "" if patterns is None else f" [containers: {' '.join(patterns)}]"


def _print(args: argparse.Namespace, result: Any) -> None:
    if args.json:
        print(json.dumps(result))
    elif args.command == "add":
        print(result["token"])
    elif args.command == "list":
        print(f"{'ID':>4}  {'SCOPE':8} {'CREATED':21} {'EXPIRES':21} {'LAST USED':21} DESCRIPTION")
        for t in result:
            print(f"{t['id']:>4}  {t['scope']:8} {_when(t['created']):21} {_when(t['expires']):21} "
                  f"{_when(t['last_used']):21} {t['description']}{_limited(t)}")
    else:
        print(f"revoked token {result['id']}")


if __name__ == "__main__":
    sys.exit(main())

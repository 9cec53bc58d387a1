"""The host admin's CLI (run as root): API tokens through the helper, and the audit trail.

It speaks the same protocol as the frontend; as root it needs no token. A new token is
printed exactly once, on stdout, and appears nowhere else.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import sys
import uuid
from typing import Any

from helperd import audit, audit_cli, config
from protocol import ops
from protocol.client import HelperClient
from protocol.config import DEFAULT_CONFIG, ConfigError
from protocol.errors import LwpError


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
        return ops.CreateToken(None, args.description, args.scope, expires)
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
    add.add_argument("--scope", choices=("read", "operate", "admin"), default="admin")
    add.add_argument("--description", default="")
    add.add_argument("--expires-days", type=float)
    token.add_parser("list", help="list tokens (never their secrets)")
    revoke = token.add_parser("revoke", help="revoke a token by id")
    revoke.add_argument("id", type=int)
    audit_cli.add_parser(area)
    args = parser.parse_args(argv)
    try:
        cfg = config.load(args.config)
        if args.area == "audit":
            return audit_cli.run(args, cfg)
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


def _print(args: argparse.Namespace, result: Any) -> None:
    if args.json:
        print(json.dumps(result))
    elif args.command == "add":
        print(result["token"])
    elif args.command == "list":
        print(f"{'ID':>4}  {'SCOPE':8} {'CREATED':21} {'EXPIRES':21} {'LAST USED':21} DESCRIPTION")
        for t in result:
            print(f"{t['id']:>4}  {t['scope']:8} {_when(t['created']):21} {_when(t['expires']):21} "
                  f"{_when(t['last_used']):21} {t['description']}")
    else:
        print(f"revoked token {result['id']}")


if __name__ == "__main__":
    sys.exit(main())

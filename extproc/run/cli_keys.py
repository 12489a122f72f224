"""`llmux keys create|list|revoke`: a thin client of the admin API."""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from typing import Any

from extproc.config.settings import Config


def add_parser(commands: Any) -> None:
    keys = commands.add_parser("keys", help="manage virtual API keys through the admin API")
    keys.add_argument("--config", "-c", required=True, help="llmux YAML config")
    keys.add_argument("--admin-url", help="default: http://127.0.0.1:<extproc.admin_port>")
    actions = keys.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="create a key; prints the secret once")
    create.add_argument("--name", required=True)
    create.add_argument("--tenant", default="default")
    create.add_argument("--models", help="comma-separated allowed models (default: all)")
    create.add_argument("--rpm", type=int)
    create.add_argument("--tpm", type=int)
    create.add_argument("--budget-tokens", type=int)
    create.add_argument("--budget-period", choices=["day", "month"], default="month")
    create.add_argument("--budget-usd", type=float, help="US dollars per --budget-usd-period")
    create.add_argument("--budget-usd-period", choices=["day", "month"], default="month")
    create.add_argument("--expires-at", type=int, help="unix seconds")
    actions.add_parser("list", help="list keys (never their secrets)")
    revoke = actions.add_parser("revoke", help="revoke a key by id")
    revoke.add_argument("id")


def run(args: argparse.Namespace, config: Config) -> int:
    base = args.admin_url or f"http://127.0.0.1:{config.extproc.admin_port}"
    if not config.auth.admin_key:
        print("llmux keys: set auth.admin_key in the config", file=sys.stderr)
        return 2
    if args.action == "create":
        spec: dict[str, Any] = {
            "name": args.name,
            "tenant": args.tenant,
            "rpm": args.rpm,
            "tpm": args.tpm,
            "expires_at": args.expires_at,
        }
        if args.models:
            spec["models"] = [m.strip() for m in args.models.split(",") if m.strip()]
        if args.budget_tokens:
            spec["budget"] = {"tokens": args.budget_tokens, "period": args.budget_period}
        if args.budget_usd:
            spec["budget_usd"] = {"amount": args.budget_usd, "period": args.budget_usd_period}
        status, body = call("POST", f"{base}/admin/keys", config.auth.admin_key, spec)
    elif args.action == "list":
        status, body = call("GET", f"{base}/admin/keys", config.auth.admin_key)
    else:
        status, body = call("DELETE", f"{base}/admin/keys/{args.id}", config.auth.admin_key)
    print(json.dumps(body, indent=2))
    return 0 if status < 400 else 1


def call(method: str, url: str, admin_key: str, payload: Any = None) -> tuple[int, Any]:
    data = json.dumps(payload).encode() if payload is not None else None
    request = urllib.request.Request(
        url,
        data=data,
        method=method,
        headers={"authorization": f"Bearer {admin_key}", "content-type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")
    except urllib.error.URLError as exc:
        return 599, {"error": {"message": f"cannot reach the admin API at {url}: {exc.reason}"}}

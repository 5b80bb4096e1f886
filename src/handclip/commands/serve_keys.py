"""``handclip serve-keys``: add, list or revoke the web service's API keys (stored hashed)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..serve.keys import ROLES

    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    add = actions.add_parser("add", help="make a key and print it (once: only its hash is kept)")
    add.add_argument("--name", required=True, help="who holds the key (the examiner in audit records)")
    add.add_argument("--role", action="append", choices=ROLES, required=True,
                     help="search, enrol and/or review (repeat for several); review fetches any key's case reports")
    listing = actions.add_parser("list", help="list keys (ids, names, roles; never the keys)")
    revoke = actions.add_parser("revoke", help="revoke every live key with this name or id")
    revoke.add_argument("name_or_id")
    for sub in (add, listing, revoke):
        sub.add_argument("--index", required=True, help="gallery directory the service runs on")


def run(args) -> int:
    from .. import api

    if args.action == "add":
        secret, key = api.add_api_key(args.index, args.name, args.role)
        print(f"added key {key.id} for {key.name} (roles: {', '.join(key.roles)}); give it to them now, "
              "it is not shown again:")
        print(secret)
    elif args.action == "list":
        listing = api.list_api_keys(args.index)
        if not listing.keys:
            print(f"no API keys in {listing.path}")
        for key in listing.keys:
            state = f"revoked {key.revoked}" if key.revoked else "live"
            print(f"{key.id}  {key.name:<24} {','.join(key.roles):<14} created {key.created}  {state}")
    else:
        for key in api.revoke_api_keys(args.index, args.name_or_id):
            print(f"revoked key {key.id} ({key.name})")
    return 0

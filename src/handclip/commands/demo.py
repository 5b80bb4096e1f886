"""``handclip demo``: the whole pipeline on built-in synthetic hands with a tiny CLIP pretrained on captioned synthetic hands."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    parser.add_argument("--config", help="YAML config to use instead of the built-in demo config")
    parser.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                        help="override a demo config value (repeatable)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args) -> int:
    from .. import api

    config = api.demo_config(args.config, args.overrides)
    api.demo(args.out, config=config, progress=not args.no_progress)
    return 0

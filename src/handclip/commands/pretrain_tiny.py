"""``handclip pretrain-tiny``: pretrain a tiny CLIP on captioned synthetic hands (image and text towers)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="weights file to write (a state dict; model.weights loads it)")
    parser.add_argument("--config", help="YAML config whose pretrain section, model.backbone, data.synthetic.seed "
                                         "and data.pixel_mean/std are used (default: the demo's)")
    parser.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. pretrain.epochs=4 (repeatable)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args) -> int:
    from .. import api

    config = api.demo_config(args.config, args.overrides)
    result = api.pretrain_tiny_from_config(config, args.out, progress=not args.no_progress, log=print)
    last = result.history[-1]
    print(f"wrote {result.path} (sha256 {result.sha256}); last epoch loss {last['loss']:.3f}, "
          f"chance {last['chance']:.3f}; {result.time_s:.1f}s")
    return 0

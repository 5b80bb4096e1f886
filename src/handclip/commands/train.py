"""``handclip train``: stage 1 then stage 2 (or one of them), a joint run, or ``--resume`` a killed run."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML config (see configs/); default: the built-in defaults")
    parser.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set stage2.epochs=30 (repeatable)")
    parser.add_argument("--stage", choices=["stage1", "stage2", "both"], default="both",
                        help="run only one stage (default: both)")
    parser.add_argument("--out", help="run folder (default: <output_dir>/<name>-<UTC time>)")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last.pt")
    parser.add_argument("--device", help="auto, cpu, cuda or cuda:N (overrides runtime.device)")
    parser.add_argument("--skip-bad", action="store_true",
                        help="leave images that do not decode or are too small out (each named) instead of stopping")
    parser.add_argument("--allow-id-overlap", action="store_true",
                        help="allow query/gallery identities that are also training identities "
                             "(data.allow_id_overlap=true; normally refused)")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bars (each epoch's summary line is still printed)")


def run(args) -> int:
    from ..errors import ConfigError
    from ..preflight import check_input_paths, require_folder

    stages = ("stage1", "stage2") if args.stage == "both" else (args.stage,)
    if args.resume and (args.config or args.overrides or args.out or args.allow_id_overlap):
        raise ConfigError("--resume continues a run with its own config.yaml; do not combine it with "
                          "--config, --set or --out")
    require_folder("--resume", args.resume, "run folder")
    from .. import api  # the config is read without torch; api.train loads it

    if args.resume:
        result = api.train(resume=args.resume, device=args.device, progress=not args.no_progress, echo=True)
    else:
        overrides = list(args.overrides)
        if args.skip_bad:
            overrides.append("data.skip_bad=true")
        if args.allow_id_overlap:
            overrides.append("data.allow_id_overlap=true")
        config = api.load_config(args.config, overrides)
        check_input_paths(config)
        result = api.train(config, run_dir=args.out, stages=stages, device=args.device,
                           progress=config.runtime.progress and not args.no_progress, echo=True)
    best = result.best or {}
    print(f"run folder: {result.run_dir}")
    if result.best_checkpoint:
        print(f"best checkpoint: {result.best_checkpoint} ({best.get('stage')} epoch {best.get('epoch')}, "
              f"val rank-1 {best.get('rank1', float('nan')):.4f}, mAP {best.get('mAP', float('nan')):.4f})")
    print(f"last checkpoint: {result.last_checkpoint}")
    return 0

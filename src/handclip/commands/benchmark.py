"""``handclip benchmark``: train + evaluate the 11k aspects and HD, print the paper-layout table."""

from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("--config-dir", default="configs", help="folder with <subset>_*.yaml configs (default: configs)")
    parser.add_argument("--data-11k", help="11k Hands folder (Hands/ and HandInfo.csv)")
    parser.add_argument("--data-hd", help="HD folder (with 'Original Images/')")
    parser.add_argument("--subsets", nargs="+", help="subsets to run (default: all five)")
    parser.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                        help="config overrides for every subset, e.g. model.weights=/models/ViT-B-16.pt")
    parser.add_argument("--out", default="runs/benchmark", help="output folder (default: runs/benchmark)")
    parser.add_argument("--no-zero-shot", action="store_true", help="skip the zero-shot baseline rows")
    parser.add_argument("--own-gallery", action="store_true",
                        help="11k: evaluate against the aspect's own gallery only, not gallery_all")


def run(args) -> int:
    from .. import api

    result = api.benchmark(args.config_dir, args.out, data_11k=args.data_11k, data_hd=args.data_hd,
                           subsets=args.subsets, overrides=args.overrides, zero_shot=not args.no_zero_shot,
                           gallery_all=not args.own_gallery, progress=True)
    print(result.table)
    print(result.forensic_table)
    print(f"written: {args.out}/benchmark.md, benchmark_forensic.md and benchmark.json")
    return 0

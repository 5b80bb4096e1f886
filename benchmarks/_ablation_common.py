"""What the ablation scripts share: their command line, and the loop that measures each variant once per
seed, resumable (results already in ``OUT/ablation.json`` are kept, so a stopped run can be continued)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Callable

from handclip.atomic import atomic_write_json


def ablation_arguments(description: str, variants: dict, argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--full", action="store_true", help="the demo config as is (slow on 2 cores)")
    parser.add_argument("--variants", nargs="+", choices=range(len(variants)), type=int,
                        default=list(range(len(variants))))
    return parser.parse_args(argv)


def measure_variants(args: argparse.Namespace, variants: dict, shrunk: list[str],
                     measure: Callable[[Path, list[str]], dict], summary: Callable[[dict], str]) -> dict:
    """{variant: [{"seed", figures...}]}: ``measure(run folder, overrides)`` for each chosen variant and seed
    not yet in ``OUT/ablation.json`` (which is rewritten after each), with the seed as both the training
    seed and the split seed; ``summary`` words one run's figures for its progress line."""
    out = Path(args.out)
    results_file = out / "ablation.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else {}
    names = list(variants)
    for seed in args.seeds:
        for index in args.variants:
            name = names[index]
            done = results.setdefault(name, [])
            if any(r["seed"] == seed for r in done):
                continue  # already measured (the script can be rerun to continue)
            overrides = ([] if args.full else shrunk) + variants[name] + [f"seed={seed}", f"data.split_seed={seed}"]
            started = time.perf_counter()
            done.append({"seed": seed, **measure(out / f"v{index}_s{seed}", overrides)})
            atomic_write_json(results_file, results)
            print(f"{name} seed {seed}: {summary(done[-1])} in {time.perf_counter() - started:.0f}s", flush=True)
    return results

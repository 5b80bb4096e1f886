"""Ablation of the text side on the demo's data, starting from the pretrained tiny CLIP.

Variants (each a named config switch): the demo recipe (two stages, stage-2 i2t loss on, prompts frozen
in stage 2); ``stage2.i2t_weight=0`` (i2t off); ``stage2.freeze_prompt=false`` (prompts trained in stage
2); ``runtime.joint=true`` (one joint run instead of two stages). Each over several seeds (``seed`` and
``data.split_seed``), mean +- std of rank-1 / mAP on the unseen identities and of the text-side figures.

By default on a shrunk demo (100 training identities, 6 images each, 16 stage-2 epochs, 3 Monte Carlo
runs) so that 4 variants x 3 seeds fit on a loaded 2-core machine; ``--full`` uses the demo config as is.
The pretrained weights are computed once and read from the cache by every later run.

    PYTHONPATH=src python benchmarks/ablation_text.py --out /tmp/ablation [--seeds 0 1 2] [--full]
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

from _ablation_common import ablation_arguments, measure_variants

from handclip.atomic import atomic_write_text
from handclip.workflows.demo import demo_config, run_demo

VARIANTS = {
    "two stages, i2t on, prompts frozen (demo)": [],
    "i2t loss off": ["stage2.i2t_weight=0"],
    "prompts trained in stage 2": ["stage2.freeze_prompt=false"],
    "joint run (no separate stage 1)": ["runtime.joint=true"],
}
SHRUNK = ["data.synthetic.train_ids=100", "data.synthetic.test_ids=50", "data.synthetic.images_per_id=6",
          "data.runs=3", "stage1.epochs=10", "stage2.epochs=16", "stage2.milestones=[13,15]", "stage2.eval_every=8"]


def _figures(metrics: dict) -> dict:
    text = metrics["text_side"]
    prompt = text.get("prompt_top1", {})
    return {
        "zero_shot_rank1": metrics["before"]["rank1"]["mean"],
        "rank1": metrics["after"]["rank1"]["mean"],
        "mAP": metrics["after"]["mAP"]["mean"],
        "stage1_loss_last": text.get("stage1_loss", {}).get("last"),
        "stage1_loss_chance": text.get("stage1_loss", {}).get("chance"),
        "prompt_top1_stage1_features": prompt.get("stage1_features"),
        "prompt_top1_final_features": prompt.get("final_features"),
        "i2t_last": text.get("stage2_i2t_loss", {}).get("last"),
        "i2t_chance": text.get("stage2_i2t_loss", {}).get("chance"),
        "time_s": metrics["time_s"],
    }


def _cell(values: list) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {std:.3f}"


def table(results: dict) -> str:
    cols = [("rank-1", "rank1"), ("mAP", "mAP"), ("stage-2 i2t loss (last epoch)", "i2t_last"),
            ("prompt top-1, trained image features", "prompt_top1_final_features")]
    lines = ["| variant | " + " | ".join(c for c, _ in cols) + " |", "|---|" + "---|" * len(cols)]
    for name, runs in results.items():
        lines.append(f"| {name} | " + " | ".join(_cell([r[key] for r in runs]) for _, key in cols) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = ablation_arguments(__doc__.splitlines()[0], VARIANTS, argv)
    out = Path(args.out)
    results = measure_variants(
        args, VARIANTS, SHRUNK, lambda run, overrides: _figures(run_demo(run, demo_config(None, overrides),
                                                                         progress=False)),
        lambda r: f"rank-1 {r['rank1']:.4f}")
    atomic_write_text(out / "ablation.md", table(results) + "\n")
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())

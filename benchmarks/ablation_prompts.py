"""Ablation of the text side's prompts on the demo's synthetic hands, from the demo's pretrained tiny CLIP.

Every variant is the demo's recipe (P x K batches, ID + triplet losses, the same stage-2 epochs and
schedule, so the same image-encoder training budget), with only the text side changed by config switches:

- identity prompts (CLIP-ReID; the demo): stage 1 learns a prompt per identity, stage 2 adds the
  image-to-text loss against them;
- image prompts without gradient (CLIP-HandID's released code): no stage 1; stage 2 adds SupCon
  image->text + text->image between each image and its own pseudo-prompt, the text path under no_grad;
  and the same with the pseudo-word averaged over its entries, which is what that code computes exactly;
- image prompts with gradient: the same, with gradients reaching the inversion network;
- identity + image prompts (PromptSG-style, "A photo of a X X X X * hand."): stage 1 learns the identity
  context, stage 2 the SupCon with each image's combined prompt (context frozen, inversion trained);
- no text side: no stage 1, ID + triplet only.

The image-prompt SupCon has the weight of the demo's image-to-text loss (0.5). Each variant runs with
seeds 0, 1, 2 (``seed`` and ``data.split_seed``); the table gives mean ± std (sample std over the seeds)
of rank-1, mAP and EER on the unseen identities (EER over every query x gallery pair of each Monte Carlo
run, averaged over the runs), the stage-2 wall time per step (median over epochs) and the CPU time of the
whole run, says which variants' rank-1 and EER differ by more than their spread, and gives each variant's
difference from the no-text-side variant seed by seed.

By default on a shrunk demo (100 training identities x 6 images, 50 unseen, stage 1 10 epochs, stage 2
24 epochs, 5 Monte Carlo runs), so that 6 variants x 3 seeds take about 25 minutes of CPU on the 2-core
machine; ``--full`` uses the demo config as is. The script continues where a previous call stopped.

    PYTHONPATH=src python benchmarks/ablation_prompts.py --out /tmp/ablation_prompts [--seeds 0 1 2] [--full]
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import numpy as np

from _ablation_common import ablation_arguments, measure_variants

from handclip.atomic import atomic_write_text
from handclip.data.manifest import Manifest
from handclip.evaluate.protocol import evaluate_manifest
from handclip.forensic.verification import equal_error_rate, roc_points, split_pairs
from handclip.model.inference import Encoder
from handclip.workflows.demo import demo_config, run_demo

IMAGE_TEXT = ["stage1.enabled=false", "stage2.i2t_weight=0", "stage2.image_prompt_weight=0.5"]
VARIANTS = {
    "identity prompts (CLIP-ReID; the demo)": [],
    "image prompts, no gradient (CLIP-HandID's code)": ["model.prompt=image", "model.inversion_grad=false",
                                                        *IMAGE_TEXT],
    "image prompts, no gradient, pseudo-word averaged (CLIP-HandID's code exactly)": [
        "model.prompt=image", "model.inversion_grad=false", "model.inversion_channel_mean=true", *IMAGE_TEXT],
    "image prompts, gradient": ["model.prompt=image", *IMAGE_TEXT],
    "identity + image prompts (both), gradient": ["model.prompt=both", "stage2.i2t_weight=0",
                                                  "stage2.image_prompt_weight=0.5"],
    "no text side (ID + triplet only)": ["stage1.enabled=false", "stage2.i2t_weight=0"],
}
BASELINE = "no text side (ID + triplet only)"
SHRUNK = ["data.synthetic.train_ids=100", "data.synthetic.test_ids=50", "data.synthetic.images_per_id=6",
          "data.runs=5", "stage1.epochs=10", "stage2.epochs=24", "stage2.milestones=[20,23]", "stage2.eval_every=8"]


def mean_eer(checkpoint: str, manifest_path: Path) -> float:
    """EER over every (query, gallery) pair of each Monte Carlo run, cosine scores, mean over the runs."""
    encoder = Encoder.from_checkpoint(checkpoint, "cpu").with_loading(decode_cache=False, num_workers=0)
    result = evaluate_manifest(encoder, Manifest.read(manifest_path), keep_distances=True)
    eers = []
    for run, (query, gallery) in result.splits.items():
        mated, nonmated = split_pairs(-np.asarray(result.distances[run]), [r.pid for r in query],
                                      [r.pid for r in gallery])
        fmr, fnmr, _ = roc_points(mated, nonmated)
        eers.append(equal_error_rate(fmr, fnmr))
    return float(np.mean(eers))


def stage2_seconds_per_step(history: list[dict], batch: int) -> float:
    """Median over the stage-2 epochs of wall seconds per step (the epoch's images / batch = its steps)."""
    per_step = [r["time_s"] / max(round(r["images_per_s"] * r["time_s"] / batch), 1)
                for r in history if r.get("stage") == "stage2" and r.get("images_per_s")]
    return float(statistics.median(per_step))


def run_variant(out: Path, overrides: list[str]) -> dict:
    config = demo_config(None, overrides)
    metrics = run_demo(out, config, progress=False)
    history = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    batch = config.stage2.ids_per_batch * config.stage2.images_per_id
    return {"rank1": metrics["after"]["rank1"]["mean"], "mAP": metrics["after"]["mAP"]["mean"],
            "eer": mean_eer(metrics["best_checkpoint"], out / "manifest.csv"),
            "s_per_step": stage2_seconds_per_step(history, batch), "cpu_time_s": metrics["cpu_time_s"],
            "zero_shot_rank1": metrics["before"]["rank1"]["mean"]}


def _stats(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def table(results: dict) -> str:
    cols = [("rank-1", "rank1", 3), ("mAP", "mAP", 3), ("EER", "eer", 3), ("stage-2 s/step (wall)", "s_per_step", 3),
            ("CPU s per run", "cpu_time_s", 0)]
    lines = ["| variant | seeds | " + " | ".join(c for c, _, _ in cols) + " |", "|---|---|" + "---|" * len(cols)]
    for name, runs in results.items():
        cells = []
        for _, key, digits in cols:
            mean, std = _stats([r[key] for r in runs])
            cells.append(f"{mean:.{digits}f} ± {std:.{digits}f}")
        lines.append(f"| {name} | {len(runs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def separations(results: dict, key: str = "rank1") -> list[str]:
    """For each pair of variants: whether their means differ by more than the larger of their two stds."""
    names, lines = list(results), []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            (ma, sa), (mb, sb) = _stats([r[key] for r in results[a]]), _stats([r[key] for r in results[b]])
            verdict = "differ by more than their spread" if abs(ma - mb) > max(sa, sb) else "within their spread"
            lines.append(f"{key}: {a} vs {b}: {ma:.3f} vs {mb:.3f} (gap {abs(ma - mb):.3f}, "
                         f"largest std {max(sa, sb):.3f}): {verdict}")
    return lines


def paired(results: dict, baseline: str, key: str = "rank1") -> list[str]:
    """Each variant minus ``baseline`` seed by seed (same seed, same data split): mean ± std of the difference."""
    base = {r["seed"]: r[key] for r in results.get(baseline, [])}
    lines = []
    for name, runs in results.items():
        gaps = [r[key] - base[r["seed"]] for r in runs if r["seed"] in base]
        if name != baseline and gaps:
            mean, std = _stats(gaps)
            lines.append(f"{key}, seed by seed: {name} minus {baseline}: {mean:+.3f} ± {std:.3f} over {len(gaps)} seeds")
    return lines


def main(argv=None) -> int:
    args = ablation_arguments(__doc__.splitlines()[0], VARIANTS, argv)
    out = Path(args.out)
    results = measure_variants(args, VARIANTS, SHRUNK, run_variant,
                               lambda r: f"rank-1 {r['rank1']:.4f}, EER {r['eer']:.4f}")
    ordered = {name: results[name] for name in VARIANTS if results.get(name)}
    report = (table(ordered) + "\n\n" + "\n".join(separations(ordered) + separations(ordered, "eer")
                                                  + paired(ordered, BASELINE) + paired(ordered, BASELINE, "eer")) + "\n")
    atomic_write_text(out / "ablation.md", report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())

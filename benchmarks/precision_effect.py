"""What the feature precision and engine change in a trained model's figures: retrieval, verification,
likelihood ratios.

For one checkpoint and a protocol manifest (the demo's: ``handclip demo --out DEMO`` gives
DEMO/run/best.pt and DEMO/manifest.csv), each setting (PyTorch fp32 = the reference, PyTorch bf16, ONNX
Runtime fp32, ONNX Runtime int8) encodes the manifest's images once, then:

- rank-1 and mAP over the manifest's runs, EER and cross-calibrated Cllr (``handclip evaluate``'s figures),
  each with its difference to fp32;
- the worst cosine of its features to fp32's;
- the LRs an examiner would be shown: every pair of the calibration images (query + gallery splits) scored,
  and turned into log10 LRs by (a) a calibration fitted on fp32 features, as a gallery searched at another
  precision would use it, and (b) a calibration fitted on the setting's own features; the largest and the
  99th-percentile |difference| in log10 LR to fp32's, and how many pairs change verbal band;
- for scale, the same differences between two fp32 calibrations fitted on disjoint halves of the identities.

    python benchmarks/precision_effect.py --checkpoint DEMO/run/best.pt --manifest DEMO/manifest.csv
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

SETTINGS = (("PyTorch fp32", "fp32", "torch"), ("PyTorch bf16", "bf16", "torch"),
            ("ONNX Runtime fp32", "auto", "onnxruntime"), ("ONNX Runtime int8", "auto", "onnxruntime-int8"))


def pair_scores(features: np.ndarray) -> np.ndarray:
    upper = np.triu_indices(len(features), k=1)
    return (features @ features.T)[upper]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--manifest", required=True)
    p.add_argument("--settings", default="all", help="comma-separated indices into the settings list (default all)")
    args = p.parse_args()

    from handclip.data.manifest import Manifest
    from handclip.evaluate.forensic import forensic_evaluation
    from handclip.evaluate.protocol import evaluate_manifest
    from handclip.forensic.calibrate import DEFAULT_SPLITS, calibration_records, fit_calibration
    from handclip.forensic.calibration import verbal_band
    from handclip.model.inference import load_encoder
    from _bench_common import load_line

    manifest = Manifest.read(args.manifest)
    records = calibration_records(manifest, DEFAULT_SPLITS, source=args.manifest)
    pids = np.array([r.pid for r in records])
    chosen = SETTINGS if args.settings == "all" else [SETTINGS[int(i)] for i in args.settings.split(",")]
    print(f"{args.checkpoint} on {args.manifest}; {len(records)} calibration images; {load_line()}")
    rows, reference = [], None
    for name, precision, engine in chosen:
        encoder = load_encoder(args.checkpoint, device="cpu", precision=precision, engine=engine)
        evaluated = evaluate_manifest(encoder, manifest, keep_distances=True)
        forensic = forensic_evaluation(evaluated)
        features = encoder.features(records)
        scores = pair_scores(features)
        own_maps, _ = fit_calibration(features, pids)
        figures = {"rank1": evaluated.aggregate["rank1"]["mean"], "mAP": evaluated.aggregate["mAP"]["mean"],
                   "EER": forensic.aggregate["eer"]["mean"], "Cllr": forensic.aggregate["cllr"]["mean"]}
        if reference is None:
            reference = {"figures": figures, "features": features, "maps": own_maps,
                         "llr": own_maps["image"].log10_lr(scores)}
        ref_llr = reference["llr"]
        with_fp32_map = reference["maps"]["image"].log10_lr(scores)
        with_own_map = own_maps["image"].log10_lr(scores)
        cosine = float((features * reference["features"]).sum(axis=1).min())
        deltas = {k: figures[k] - reference["figures"][k] for k in figures}
        a, b = np.abs(with_fp32_map - ref_llr), np.abs(with_own_map - ref_llr)
        band_changes = int((verbal_band(with_fp32_map) != verbal_band(ref_llr)).sum())
        rows.append((name, figures, deltas, cosine, a.max(), np.percentile(a, 99), b.max(), np.percentile(b, 99),
                     band_changes, len(scores)))
        print(f"  {name}: {encoder.describe_inference()}", flush=True)
    print("\n| setting | rank-1 | mAP | EER | Cllr | largest difference to fp32 | worst feature cosine to fp32 |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, figures, deltas, cosine, *_ in rows:
        largest = max(abs(v) for v in deltas.values())
        print(f"| {name} | {figures['rank1']:.4f} | {figures['mAP']:.4f} | {figures['EER']:.4f} | "
              f"{figures['Cllr']:.4f} | {largest:.4f} | {cosine:.6f} |")
    print("\n| setting | log10 LR, fp32's calibration: max / 99th pct |diff| | own calibration: max / 99th pct "
          "|diff| | pairs changing verbal band (of all pairs) |")
    print("|---|---:|---:|---:|")
    for name, _, _, _, a_max, a_99, b_max, b_99, bands, pairs in rows:
        print(f"| {name} | {a_max:.4f} / {a_99:.4f} | {b_max:.4f} / {b_99:.4f} | {bands} of {pairs} |")
    # The scale to judge those differences by: how much the fp32 calibration itself moves with its data.
    halves = sampling_spread(reference["features"], pids)
    print(f"\nfor scale: fp32 calibrations fitted on two random halves of the identities differ by max "
          f"{halves[0]:.4f} / 99th pct {halves[1]:.4f} in log10 LR on the same pairs, and change the verbal band "
          f"of {halves[2]} pairs")


def sampling_spread(features: np.ndarray, pids: np.ndarray, seed: int = 0) -> tuple[float, float, int]:
    """(max, 99th percentile |difference| in log10 LR, pairs changing band) between fp32 calibrations fitted on
    two disjoint random halves of the identities, applied to every pair."""
    from handclip.forensic.calibrate import fit_calibration
    from handclip.forensic.calibration import verbal_band

    people = np.unique(pids)
    first = np.random.default_rng(seed).permutation(people)[: len(people) // 2]
    in_first = np.isin(pids, first)
    maps = [fit_calibration(features[mask], pids[mask])[0]["image"] for mask in (in_first, ~in_first)]
    scores = pair_scores(features)
    one, two = (m.log10_lr(scores) for m in maps)
    diff = np.abs(one - two)
    return float(diff.max()), float(np.percentile(diff, 99)), int((verbal_band(one) != verbal_band(two)).sum())


if __name__ == "__main__":
    main()

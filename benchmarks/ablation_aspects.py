"""Ablation on four-aspect synthetic hands: per-aspect models, one model for all aspects, one with aspect
embeddings (SIE); the cross-aspect matrix with and without mirroring; per-pair calibration on unseen people.

On the demo's tiny model, shrunk as benchmarks/ablation_text.py shrinks it (100 training and 50 test
identities x 6 images per aspect, 3 Monte Carlo runs, 10 stage-1 and 16 stage-2 epochs), starting from the
demo's pretrained tiny CLIP. For each seed (``seed`` and ``data.split_seed``):

* four per-aspect models, each trained and tested on one aspect's manifest (the 11k way);
* one model trained on all four aspects (``model.aspect_head: true``: its own small CNN, accuracy reported);
* the same with ``model.sie: aspect`` (CLIP-ReID's SIE, the aspect as the camera);
* same-aspect rank-1, mAP and EER per aspect for all three; the 4 x 4 matrix of the two one-model variants
  without and with mirroring the query across sides; aspect-head accuracy on the test images;
* per-pair calibration (``handclip.forensic.pair_calibration``) of the best variant on the test identities:
  Cllr cross-validated by identity for every pair, and, on one identity-disjoint half split, the Cllr of a
  cross-aspect pair's own map against the Cllr it would get by borrowing the gallery aspect's same-aspect map.

Results go to OUT/ablation.json (the script can be rerun to continue) and OUT/ablation.md.

    PYTHONPATH=src python benchmarks/ablation_aspects.py --out /tmp/aspects [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from handclip.aspects import ASPECTS, is_left, pair_key, record_aspect
from handclip.atomic import atomic_write_json, atomic_write_text
from handclip.data.manifest import Manifest
from handclip.datasets import prepare_from_config
from handclip.evaluate.aspect_matrix import aspect_matrix
from handclip.forensic.calibration import cllr_figures, fit_score_map
from handclip.forensic.pair_calibration import AspectImages, fit_aspect_pairs, pair_comparisons
from handclip.model.inference import Encoder
from handclip.synthetic.pretrain import pretrained_weights
from handclip.train.engine import train
from handclip.workflows.demo import demo_config

SHRUNK = ["data.synthetic.train_ids=100", "data.synthetic.test_ids=50", "data.synthetic.images_per_id=6",
          "data.runs=3", "stage1.epochs=10", "stage2.epochs=16", "stage2.milestones=[13,15]", "stage2.eval_every=8",
          "runtime.progress=false", "data.synthetic.aspects=[dorsal_r,dorsal_l,palmar_r,palmar_l]"]
ONE_MODEL = {"one model, all aspects": ["model.aspect_head=true"],
             "one model + SIE (aspect embeddings)": ["model.aspect_head=true", "model.sie=aspect"]}
PER_ASPECT = "four per-aspect models"
METRICS = ("rank1", "mAP", "eer")


def _train(out: Path, overrides: list[str], manifest_path: Path):
    config = demo_config(None, overrides + [f"data.manifest={manifest_path}"])
    weights = pretrained_weights(config).path  # the demo's pretrained tiny CLIP (from the cache after the first)
    config = config.model_copy(update={"model": config.model.model_copy(update={"weights": str(weights)})})
    run_dir = out / "run"
    result = train(config, run_dir=run_dir) if not (run_dir / "best.pt").is_file() else None
    checkpoint = result.best_checkpoint if result else run_dir / "best.pt"
    return config, Encoder.from_checkpoint(checkpoint).with_loading(decode_cache=False, num_workers=0)


def _diagonal(matrix) -> dict:
    return {a: {m: matrix.cells[(a, a)][m]["mean"] for m in METRICS} for a in matrix.aspects}


def _cells(matrix) -> dict:
    return {pair_key(q, g): {**{m: matrix.cells[(q, g)][m]["mean"] for m in METRICS},
                             "mirrored": matrix.cells[(q, g)]["mirrored"]} for q, g in matrix.cells}


def _aspect_images(encoder, manifest) -> dict[str, AspectImages]:
    """Each test image once (own aspect), and mirrored, per aspect: the calibration data."""
    records = {}
    for rec in manifest.records:
        if rec.split in ("query", "gallery") and not rec.is_distractor:
            records.setdefault(rec.path, rec)
    out = {}
    for aspect in ASPECTS:
        chosen = [r for r in records.values() if record_aspect(r) == aspect]
        out[aspect] = AspectImages(encoder.features(chosen), np.array([r.pid for r in chosen]),
                                   encoder.features(chosen, mirror=True))
    return out


def _borrowing(images: dict, seed: int) -> dict:
    """On a half split of the people: Cllr of each cross-side dorsal pair (query mirrored) and each palm->back
    pair with its own map, and with the gallery aspect's same-aspect map borrowed (both fitted on the other half)."""
    people = np.unique(images["dorsal_r"].pids)
    fit_half = set(np.random.default_rng(seed).permutation(people)[: len(people) // 2].tolist())
    out = {}
    for q, g in (("dorsal_l", "dorsal_r"), ("dorsal_r", "dorsal_l"), ("palmar_r", "dorsal_r"), ("palmar_l", "dorsal_l")):
        mirror = is_left(q) != is_left(g)
        own = pair_comparisons(images[q], images[g], "image", mirror)
        same = pair_comparisons(images[g], None, "image", False)

        def half(pairs, fitted: bool):
            scores, labels, first, second = pairs
            inside = np.array([(a in fit_half) == fitted and (b in fit_half) == fitted for a, b in zip(first, second)])
            return scores[inside], labels[inside]

        fit_own, fit_same, (test_scores, test_labels) = half(own, True), half(same, True), half(own, False)
        figures = {}
        for name, (scores, labels) in (("own", fit_own), ("borrowed", fit_same)):
            score_map = fit_score_map(scores[labels == 1], scores[labels == 0], "logit", seed=seed)
            figures[name] = cllr_figures(score_map.log10_lr(test_scores), test_labels)["cllr"]
        out[pair_key(q, g, mirror)] = figures
    return out


def run_seed(out: Path, seed: int, data: Path) -> dict:
    base = SHRUNK + [f"seed={seed}", f"data.split_seed={seed}"]
    config = demo_config(None, base)
    manifest = prepare_from_config(config.data, data)
    manifest_path = manifest.write(out / f"manifest_s{seed}.csv")
    out.mkdir(parents=True, exist_ok=True)
    result, timings = {"seed": seed}, {}
    per_aspect = {}
    for aspect in ASPECTS:
        started = time.perf_counter()
        path = Manifest([r for r in manifest.records if record_aspect(r) == aspect]).write(
            out / f"manifest_s{seed}_{aspect}.csv")
        cfg, encoder = _train(out / f"s{seed}_{aspect}", base, path)
        per_aspect[aspect] = _diagonal(aspect_matrix(encoder, manifest, cfg.eval, aspects=[aspect]))[aspect]
        timings[aspect] = round(time.perf_counter() - started, 1)
        print(f"seed {seed} per-aspect {aspect}: {per_aspect[aspect]} ({timings[aspect]}s)", flush=True)
    result[PER_ASPECT] = {"same_aspect": per_aspect}
    for index, (name, extra) in enumerate(ONE_MODEL.items()):
        started = time.perf_counter()
        cfg, encoder = _train(out / f"s{seed}_one{index}", base + extra, manifest_path)
        plain = aspect_matrix(encoder, manifest, cfg.eval)
        mirrored = aspect_matrix(encoder, manifest, cfg.eval, mirror_query=True)
        test = [r for r in manifest.records if r.split in ("query", "gallery") and r.run == 0]
        predicted = encoder.predict_aspects(test)
        accuracy = float(np.mean([p == record_aspect(r) for (p, _), r in zip(predicted, test)]))
        result[name] = {"same_aspect": _diagonal(plain), "matrix": _cells(plain), "matrix_mirrored": _cells(mirrored),
                        "aspect_head_accuracy": accuracy, "aspect_head_images": len(test),
                        "checkpoint": str(out / f"s{seed}_one{index}" / "run" / "best.pt")}
        timings[name] = round(time.perf_counter() - started, 1)
        print(f"seed {seed} {name}: {result[name]['same_aspect']} aspect head {accuracy:.3f} ({timings[name]}s)",
              flush=True)
    result["timings_s"] = timings
    return result


def calibration_phase(out: Path, results: dict, best: str) -> None:
    """Per-pair calibration of the best variant's model, per seed (its checkpoint from the training phase)."""
    for entry in results["seeds"]:
        if "calibration" in entry:
            continue
        started = time.perf_counter()
        encoder = Encoder.from_checkpoint(entry[best]["checkpoint"]).with_loading(decode_cache=False, num_workers=0)
        images = _aspect_images(encoder, Manifest.read(out / f"manifest_s{entry['seed']}.csv"))
        _, figures = fit_aspect_pairs(images, seed=entry["seed"])
        entry["calibration"] = {"variant": best, "pairs": {k: {"cllr": f["image"]["cllr"], "cllr_min": f["image"]["cllr_min"]}
                                                           for k, f in figures.items() if "image" in f},
                                "borrowing": _borrowing(images, entry["seed"]),
                                "time_s": round(time.perf_counter() - started, 1)}
        atomic_write_json(out / "ablation.json", results)
        print(f"seed {entry['seed']} calibration done ({entry['calibration']['time_s']}s)", flush=True)


def _stat(values) -> str:
    values = [v for v in values if v is not None]
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {std:.3f}"


def tables(results: dict, best: str) -> str:
    seeds = results["seeds"]
    variants = [PER_ASPECT, *ONE_MODEL]
    lines = ["Same-aspect retrieval (mean over the four aspects, then mean ± std over seeds):", "",
             "| variant | rank-1 | mAP | EER |", "|---|---|---|---|"]
    for name in variants:
        cells = [_stat([np.mean([s[name]["same_aspect"][a][m] for a in ASPECTS]) for s in seeds]) for m in METRICS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Same-aspect rank-1 per aspect:", "", "| variant | " + " | ".join(ASPECTS) + " |",
              "|---|" + "---|" * len(ASPECTS)]
    for name in variants:
        lines.append(f"| {name} | " + " | ".join(_stat([s[name]["same_aspect"][a]["rank1"] for s in seeds])
                                                for a in ASPECTS) + " |")
    for key, title in (("matrix", "no mirroring"), ("matrix_mirrored", "query mirrored when its side differs")):
        for metric in METRICS:
            lines += ["", f"Aspect matrix of '{best}', {metric}, {title} (rows: query aspect, columns: gallery):", "",
                      "| query \\ gallery | " + " | ".join(ASPECTS) + " |", "|---|" + "---|" * len(ASPECTS)]
            for q in ASPECTS:
                lines.append(f"| {q} | " + " | ".join(_stat([s[best][key][pair_key(q, g)][metric] for s in seeds])
                                                      for g in ASPECTS) + " |")
    lines += ["", "Aspect head accuracy on the test images (run 0, all aspects): " + ", ".join(
        f"{name} {_stat([s[name]['aspect_head_accuracy'] for s in seeds])}" for name in ONE_MODEL)]
    if all("calibration" in s for s in seeds):
        pairs = list(seeds[0]["calibration"]["pairs"])
        lines += ["", f"Per-pair calibration of '{best}' on the test identities, Cllr (cross-validated by identity):",
                  "", "| pair | Cllr | Cllr_min |", "|---|---|---|"]
        for key in pairs:
            lines.append(f"| {key} | {_stat([s['calibration']['pairs'][key]['cllr'] for s in seeds])} | "
                         f"{_stat([s['calibration']['pairs'][key]['cllr_min'] for s in seeds])} |")
        lines += ["", "Own pair map against the gallery aspect's same-aspect map borrowed (half split of people), Cllr:",
                  "", "| pair | own map | borrowed same-aspect map |", "|---|---|---|"]
        for key in seeds[0]["calibration"]["borrowing"]:
            lines.append(f"| {key} | {_stat([s['calibration']['borrowing'][key]['own'] for s in seeds])} | "
                         f"{_stat([s['calibration']['borrowing'][key]['borrowed'] for s in seeds])} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="further config overrides for every training (e.g. a smaller smoke run)")
    parser.add_argument("--collect", nargs="*", default=[], metavar="DIR",
                        help="take the seeds already trained in these output folders (seeds run in parallel)")
    parser.add_argument("--train-only", action="store_true", help="train and evaluate the seeds, no calibration")
    parser.add_argument("--data", help="where the synthetic images are rendered (default OUT/data; the images do "
                                       "not depend on the seed, so parallel runs can share a folder rendered first)")
    args = parser.parse_args(argv)
    SHRUNK.extend(args.set)
    out = Path(args.out)
    started = time.perf_counter()
    results_file = out / "ablation.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else {"seeds": []}
    for folder in args.collect:
        for entry in json.loads((Path(folder) / "ablation.json").read_text())["seeds"]:
            if not any(s["seed"] == entry["seed"] for s in results["seeds"]):
                results["seeds"].append(entry)
                (out / f"manifest_s{entry['seed']}.csv").write_bytes(
                    (Path(folder) / f"manifest_s{entry['seed']}.csv").read_bytes())
    for seed in args.seeds:
        if any(s["seed"] == seed for s in results["seeds"]):
            continue
        results["seeds"].append(run_seed(out, seed, Path(args.data) if args.data else out / "data"))
        atomic_write_json(results_file, results)
    if args.train_only:
        return 0
    chosen = sorted((s for s in results["seeds"] if s["seed"] in args.seeds), key=lambda s: s["seed"])
    results["seeds"] = chosen
    best = max(ONE_MODEL, key=lambda n: np.mean([s[n]["same_aspect"][a]["rank1"] for s in chosen for a in ASPECTS]))
    calibration_phase(out, results, best)
    results["best"] = best
    results["time_s"] = results.get("time_s", 0) + round(time.perf_counter() - started, 1)
    atomic_write_json(results_file, results)
    atomic_write_text(out / "ablation.md", tables(results, best))
    print(tables(results, best))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Protocol evaluation: features once per image, metrics per Monte Carlo run, mean and std.

Identities are matched by the manifest's ``pid`` and nothing else (the prototype matched by folder
order and scored ~0% on HD). Every image needed by any requested run is encoded exactly once; the
runs then only index into that feature table.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from .config import DataConfig, EvalConfig
from .errors import DataError
from .metrics import aggregate_runs, cosine_distance, euclidean_distance, evaluate_rank
from .runtime import autocast, resolve_device

METRIC_KEYS = ("rank1", "rank5", "rank10", "mAP", "mINP")


@dataclass
class RunMetrics:
    run: int
    metrics: dict
    num_query: int
    num_gallery: int
    num_gallery_ids: int
    cmc: list = field(default_factory=list, repr=False)


@dataclass
class EvalResult:
    per_run: list[RunMetrics]
    aggregate: dict
    feature_dim: int
    num_images_encoded: int
    options: dict = field(default_factory=dict)
    # path -> L2-normalised feature, and per-run query/gallery records and distances (for pictures)
    features: dict = field(default_factory=dict, repr=False)
    splits: dict = field(default_factory=dict, repr=False)
    distances: dict = field(default_factory=dict, repr=False)

    def mean_cmc(self) -> np.ndarray:
        return np.mean([r.cmc for r in self.per_run], axis=0)

    def as_dict(self) -> dict:
        return {
            "aggregate": self.aggregate,
            "per_run": [
                {"run": r.run, **r.metrics, "num_query": r.num_query, "num_gallery": r.num_gallery,
                 "num_gallery_ids": r.num_gallery_ids}
                for r in self.per_run
            ],
            "feature_dim": self.feature_dim,
            "num_images_encoded": self.num_images_encoded,
            "options": self.options,
        }


def _unique_paths(records: Iterable) -> list:
    seen: dict[str, object] = {}
    for rec in records:
        seen.setdefault(rec.path, rec)
    return list(seen.values())


def check_images_exist(records: Sequence, source=None) -> None:
    """DataError naming the first missing image (and how many are missing) before any encoding starts."""
    missing = [rec.path for rec in records if not os.path.isfile(rec.path)]
    if missing:
        where = f" (listed in {source})" if source else " (listed in the manifest)"
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise DataError(f"image {missing[0]}{where} does not exist{more}")


def _worker_error_line(exc: Exception) -> str:
    """The original one-line message of an error re-raised by a DataLoader worker.

    torch wraps a worker's exception as "Caught X in DataLoader worker process N.\nOriginal Traceback ..."
    with the traceback in the message; the user should see the last line only, without the type name.
    """
    text = str(exc)
    if "Original Traceback" not in text:
        return text
    last = text.strip().splitlines()[-1]
    head, sep, message = last.partition(": ")
    return message if sep and "Error" in head else last


@torch.inference_mode()
def extract_features(model, records: Sequence, data_cfg: DataConfig, eval_cfg: EvalConfig | None = None,
                     device=None, flip: bool | None = None, progress: bool = False) -> np.ndarray:
    """Encode ``records`` (anything with ``.path``) in order; returns float32 [N, feature_dim], L2-normalised.

    With ``flip`` the feature is the mean of the image's and its mirror's (then normalised).
    """
    from .data.loaders import build_eval_loader

    eval_cfg = eval_cfg or EvalConfig()
    flip = eval_cfg.flip if flip is None else flip
    device = resolve_device(device)
    was_training = model.training
    model.eval()
    loader = build_eval_loader(data_cfg, list(records), eval_cfg.batch_size)
    chunks = []
    iterator = loader
    if progress:
        from tqdm import tqdm

        # disable=None: no bar when stderr is not a terminal (logs, pipes), so errors stay on one clean line
        iterator = tqdm(loader, desc="features", unit="batch", leave=False, disable=None)
    try:
        for batch in iterator:
            images = batch[0].to(device, non_blocking=True)
            with autocast(device):
                feats = model.extract(images).float()
                if flip:
                    feats = feats + model.extract(torch.flip(images, dims=[3])).float()
            chunks.append(torch.nn.functional.normalize(feats, dim=1).cpu())
    except DataError as exc:  # an unreadable image met in a loader worker: one line, not a worker traceback
        raise DataError(_worker_error_line(exc)) from None
    finally:
        model.train(was_training)
    if not chunks:
        return np.zeros((0, getattr(model, "feature_dim", 0)), dtype=np.float32)
    return torch.cat(chunks).numpy().astype(np.float32, copy=False)


def distance_matrix(q: np.ndarray, g: np.ndarray, eval_cfg: EvalConfig) -> np.ndarray:
    if eval_cfg.rerank:
        from .rerank import re_ranking

        return re_ranking(q, g, k1=eval_cfg.k1, k2=eval_cfg.k2, lambda_value=eval_cfg.lambda_value)
    if eval_cfg.metric == "euclidean":
        return euclidean_distance(q, g)
    return cosine_distance(q, g)


def select_runs(manifest, runs) -> list[int]:
    available = manifest.runs
    if not available:
        raise DataError("the manifest has no query/gallery runs to evaluate")
    if runs is None or runs == "all":
        return list(available)
    chosen = list(dict.fromkeys(int(r) for r in ([runs] if isinstance(runs, (int, str)) else runs)))
    if not chosen:
        raise DataError("no runs were chosen to evaluate")
    missing = [r for r in chosen if r not in available]
    if missing:
        raise DataError(f"run {missing[0]} does not exist in the manifest (runs are {available[0]}..{available[-1]})")
    return chosen


def evaluate_records(features: dict[str, np.ndarray], query, gallery, eval_cfg: EvalConfig,
                     what: str = "this run") -> tuple[dict, np.ndarray]:
    """Metrics for one query/gallery split, given a path -> feature table."""
    if not query:
        raise DataError(f"no query images in {what}")
    if not gallery:
        raise DataError(f"no gallery images in {what}")
    q = np.stack([features[r.path] for r in query])
    g = np.stack([features[r.path] for r in gallery])
    dist = distance_matrix(q, g, eval_cfg)
    camids_known = all(r.camid is not None for r in query) and all(r.camid is not None for r in gallery)
    result = evaluate_rank(
        dist,
        np.array([r.pid for r in query]),
        np.array([r.pid for r in gallery]),
        np.array([r.camid for r in query]) if camids_known else None,
        np.array([r.camid for r in gallery]) if camids_known else None,
        max_rank=eval_cfg.max_rank,
    )
    metrics = result.as_dict()
    metrics["cmc"] = [float(v) for v in result.cmc]
    return metrics, dist


def evaluate_manifest(model, manifest, data_cfg: DataConfig, eval_cfg: EvalConfig | None = None, runs=None,
                      device=None, distractors: bool = True, progress: bool = False,
                      keep_distances: bool = False) -> EvalResult:
    """Evaluate every requested run of ``manifest``; each image is encoded once for all runs.

    ``distractors=False`` drops the manifest's distractor gallery images (11k gallery_all, HD 502-712).
    """
    eval_cfg = eval_cfg or EvalConfig()
    chosen = select_runs(manifest, runs)
    splits = {}
    for run in chosen:
        gallery = manifest.split("gallery", run)
        if not distractors:
            gallery = [r for r in gallery if not r.is_distractor]
        splits[run] = (manifest.split("query", run), gallery)
    needed = _unique_paths(rec for q, g in splits.values() for rec in (*q, *g))
    check_images_exist(needed)
    feats = extract_features(model, needed, data_cfg, eval_cfg, device=device, progress=progress)
    table = {rec.path: feats[i] for i, rec in enumerate(needed)}
    per_run = []
    distances = {}
    for run, (query, gallery) in splits.items():
        metrics, dist = evaluate_records(table, query, gallery, eval_cfg, what=f"run {run} of the manifest")
        if keep_distances:
            distances[run] = dist
        cmc = metrics.pop("cmc")
        per_run.append(RunMetrics(run, metrics, len(query), len(gallery), len({r.pid for r in gallery}), cmc))
    aggregate = aggregate_runs([{k: r.metrics[k] for k in METRIC_KEYS} for r in per_run])
    options = {"flip": eval_cfg.flip, "rerank": eval_cfg.rerank, "metric": eval_cfg.metric,
               "runs": chosen, "distractors": distractors,
               "distractor_images": max(sum(r.is_distractor for r in g) for _, g in splits.values())}
    return EvalResult(per_run, aggregate, int(feats.shape[1]), len(needed), options,
                      features=table, splits=splits, distances=distances)


def evaluate_validation(model, manifest, data_cfg: DataConfig, eval_cfg: EvalConfig | None = None,
                        device=None) -> dict:
    """Model-selection score: held-out val images (one per training identity) ranked against the train images.

    Test identities are never looked at here (the prototype chose its best epoch on them).
    """
    eval_cfg = eval_cfg or EvalConfig()
    eval_cfg = eval_cfg.model_copy(update={"rerank": False, "flip": False})
    query = manifest.split("val")
    gallery = manifest.split("train")
    if not query:
        raise DataError("the manifest has no val split to choose the best checkpoint on")
    needed = _unique_paths([*query, *gallery])
    check_images_exist(needed)
    feats = extract_features(model, needed, data_cfg, eval_cfg, device=device)
    table = {rec.path: feats[i] for i, rec in enumerate(needed)}
    metrics, _ = evaluate_records(table, query, gallery, eval_cfg)
    return {k: metrics[k] for k in METRIC_KEYS}


# ----------------------------------------------------------------------------------------------
# Models to evaluate and the files an evaluation leaves behind


def load_model_for_evaluation(checkpoint=None, backbone: str | None = None, weights: str | None = None,
                              image_size=None, allow_unsafe_weights: bool = False):
    """A trained checkpoint, or a backbone with its (pre-trained or random) weights for the zero-shot baseline.

    Returns (model, data_cfg, label). The zero-shot model goes through the same feature path as a
    trained one (``HandCLIP.extract``), so stage-0 numbers are comparable.
    """
    from .model.checkpoint import load_checkpoint
    from .model.handclip import build_model

    if checkpoint is not None and backbone is not None:
        raise DataError("give either a checkpoint or a backbone for a zero-shot evaluation, not both")
    if checkpoint is not None and (weights is not None or image_size is not None):
        raise DataError("weights and image size are for a zero-shot backbone; a checkpoint brings its own")
    if checkpoint is not None:
        model, _config, extra = load_checkpoint(checkpoint)
        spec = model.spec
        data_cfg = DataConfig(image_size=tuple(spec["image_size"]), pixel_mean=tuple(spec["pixel_mean"]),
                              pixel_std=tuple(spec["pixel_std"]))
        label = f"HandCLIP ({spec['model']['backbone']})"
        return model, data_cfg, label
    if backbone is None:
        raise DataError("nothing to evaluate: give --checkpoint, or --backbone (with --weights) for zero-shot")
    from .config import ModelConfig

    data_cfg = DataConfig(image_size=tuple(image_size) if image_size else (224, 224))
    model_cfg = ModelConfig(backbone=backbone, weights=weights, allow_unsafe_weights=allow_unsafe_weights)
    # A random-init baseline is seeded, so the same command gives the same numbers twice.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_model(model_cfg, data_cfg, num_ids=1)
    model.eval()
    source = Path(weights).name if weights else "random init"
    return model, data_cfg, f"zero-shot {backbone} ({source})"


def _pick_queries(result: EvalResult, run: int, count: int) -> list[int]:
    """Indices of queries to show: rank-1 mistakes first (what an examiner must look at), then hits."""
    query, gallery = result.splits[run]
    dist = result.distances[run]
    g_pids = np.array([r.pid for r in gallery])
    nearest = np.argmin(dist, axis=1)
    wrong = [i for i in range(len(query)) if g_pids[nearest[i]] != query[i].pid]
    right = [i for i in range(len(query)) if g_pids[nearest[i]] == query[i].pid]
    rng = np.random.default_rng(0)
    wrong, right = [int(i) for i in rng.permutation(wrong)], [int(i) for i in rng.permutation(right)]
    # Half mistakes, half hits; when one kind runs short the other fills the sheet.
    take_right = right[: max(count // 2, count - len(wrong))]
    take_wrong = wrong[: count - len(take_right)]
    return sorted(take_wrong) + sorted(take_right)


REPORT_FILES = ("metrics.json", "metrics.md", "cmc.png", "ranked_list.png", "training_curves.png", "report.html",
                "det.png", "fnir_fpir.png", "tippett.png", "lr_calibration.png")


def describe_options(options: dict) -> str:
    """The evaluation settings in words, for report subtitles."""
    runs = options.get("runs") or []
    if runs and runs == list(range(runs[0], runs[-1] + 1)) and len(runs) > 1:
        run_text = f"runs {runs[0]}-{runs[-1]}"
    else:
        run_text = ("run " if len(runs) == 1 else "runs ") + ", ".join(str(r) for r in runs)
    parts = [
        run_text,
        f"{options.get('metric', 'cosine')} distance",
        "flip TTA on" if options.get("flip") else "flip TTA off",
        "re-ranking on" if options.get("rerank") else "re-ranking off",
        ("no distractors" if not options.get("distractor_images", 1) else "distractors in the gallery")
        if options.get("distractors", True) else "distractors dropped",
    ]
    return "; ".join(parts)


def write_evaluation_outputs(result: EvalResult, out_dir, title: str, label: str, manifest_path=None,
                             history: list | None = None, queries_shown: int = 8, top_k: int = 10,
                             forensic=None) -> Path:
    """metrics.json, metrics.md, cmc.png, ranked_list.png, (training_curves.png), report.html.

    With ``forensic`` (a ``handclip.evaluate.forensic.ForensicResult``) also the verification, open-set
    and likelihood-ratio tables and det.png, fnir_fpir.png, tippett.png, lr_calibration.png.

    Everything is rendered into a staging folder first and moved into ``out_dir`` only when all of it
    succeeded, so a failed evaluation leaves no partial report.
    """
    import json
    import shutil
    import tempfile

    from . import report
    from .atomic import atomic_write_json, atomic_write_text

    out_dir = Path(out_dir)
    created = [p for p in [out_dir.parent, *out_dir.parent.parents] if not p.exists()]  # to remove on failure
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    done = False
    try:
        summary = {"title": title, "model": label, "manifest": str(manifest_path) if manifest_path else None,
                   **result.as_dict()}
        if forensic is not None:
            summary["forensic"] = forensic.as_dict()
        atomic_write_json(stage / "metrics.json", json.loads(json.dumps(summary, default=float)))
        rows = [{"run": r.run, **{k: r.metrics[k] for k in METRIC_KEYS}, "queries": r.num_query,
                 "gallery": r.num_gallery} for r in result.per_run]
        rows.append({"run": "mean ± std", **{k: result.aggregate[k] for k in METRIC_KEYS}})
        table = report.markdown_table(rows, columns=["run", *METRIC_KEYS, "queries", "gallery"])
        skipped = sum(int(r.metrics.get("num_skipped_queries", 0)) for r in result.per_run)
        note = (f"Metrics in %; mean ± std (population) over {len(result.per_run)} run(s); "
                f"{describe_options(result.options)}; gallery ids per run: "
                f"{', '.join(str(r.num_gallery_ids) for r in result.per_run)}; "
                f"queries without a correct match in the gallery (skipped): {skipped}.")
        own = [[r.pid for r in g if not r.is_distractor] for _, g in result.splits.values()]
        if own and all(len(set(pids)) == len(pids) for pids in own):  # single-shot gallery (11k, HD protocols)
            note += (" Each identity has one gallery image, so mAP and mINP both equal the mean reciprocal rank "
                     "of the correct match.")
        forensic_md, forensic_tables, forensic_images = "", {}, []
        if forensic is not None:
            from .evaluate.forensic_report import render_forensic

            forensic_md, forensic_tables, forensic_images = render_forensic(
                forensic, stage, title.removeprefix("Evaluation on "))
        atomic_write_text(stage / "metrics.md", f"# {title}\n\nModel: {label}\n\n{table}\n{note}\n"
                          + (f"\n{forensic_md}" if forensic_md else ""))
        images = []
        runs_text = f"mean over {len(result.per_run)} runs" if len(result.per_run) > 1 else f"run {result.per_run[0].run}"
        # Past the gallery size every curve is flat at 100%: stop there.
        cmc_ranks = max(1, min(20, len(result.mean_cmc()), max(r.num_gallery for r in result.per_run)))
        report.plot_cmc({label: result.mean_cmc()}, stage / "cmc.png", max_rank=cmc_ranks,
                        title=f"CMC, {title.removeprefix('Evaluation on ')} ({runs_text})")
        images.append((f"CMC curve ({runs_text})", stage / "cmc.png"))
        run = result.per_run[0].run
        if queries_shown > 0 and result.distances.get(run) is not None:
            query, gallery = result.splits[run]
            dist = result.distances[run]
            picks = _pick_queries(result, run, queries_shown)
            top_k = max(1, min(top_k, len(gallery)))
            rankings = []
            for i in picks:
                order = np.argsort(dist[i], kind="stable")[:top_k]
                rankings.append([(gallery[j].path, gallery[j].pid, float(dist[i, j])) for j in order])
            report.ranked_list_sheet([(query[i].path, query[i].pid) for i in picks], rankings,
                                     stage / "ranked_list.png", top_k=top_k)
            images.append((f"Ranked gallery lists, run {run}: rank-1 mistakes first, then hits; green frame = same "
                           f"identity as the query, red = different; d = distance", stage / "ranked_list.png"))
        if history:
            report.plot_training_curves(history, stage / "training_curves.png")
            images.append(("Training curves (from the run's metrics.jsonl): losses, learning rate, and rank-1/mAP on "
                           "the validation split of the training identities, which picks best.pt", stage / "training_curves.png"))
        images += forensic_images
        manifest_text = f"; manifest {manifest_path}" if manifest_path else ""
        sections = {"Notes": note}
        if forensic is not None:
            from .evaluate.forensic_report import notes_text

            sections["Forensic figures: how they are computed"] = notes_text(forensic)
        report.html_report(stage / "report.html", title, table, images, sections=sections, tables=forensic_tables,
                           subtitle=f"Model: {label}{manifest_text}; {describe_options(result.options)}; "
                                    f"{result.num_images_encoded} images encoded once, {result.feature_dim}-d features")
        out_dir.mkdir(parents=True, exist_ok=True)
        written = {item.name for item in stage.iterdir()}
        for name in REPORT_FILES:  # a picture from an earlier report in this folder must not look current
            if name not in written:
                (out_dir / name).unlink(missing_ok=True)
        for item in stage.iterdir():
            item.replace(out_dir / item.name)
        done = True
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        if not done:
            for folder in created:  # innermost first; only the empty folders this call made
                try:
                    folder.rmdir()
                except OSError:
                    break
    return out_dir

"""The paper table: train and evaluate every benchmark subset, then one row per method.

For each subset (the four 11k aspects and HD) a config file from the config folder is trained
(``handclip.api.train``), its best checkpoint (chosen on the validation split) is evaluated over all
Monte Carlo runs of that run's own manifest, and optionally the zero-shot backbone is evaluated on the
same manifest through the same code path. Published numbers are printed beside them, marked as quoted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..atomic import atomic_write_json, atomic_write_text
from ..config import load_config
from ..data.manifest import Manifest
from ..errors import ConfigError
from ..evaluate.forensic import forensic_evaluation
from ..evaluate.forensic_report import forensic_benchmark_table
from ..evaluate.protocol import evaluate_manifest
from ..evaluate.references import SUBSETS, benchmark_table
from ..model.handclip import build_model
from ..model.inference import Encoder
from ..train.engine import train


@dataclass
class BenchmarkResult:
    rows: list[tuple[str, dict]] = field(default_factory=list)
    runs: dict = field(default_factory=dict)
    table: str = ""
    forensic_table: str = ""


def find_config(config_dir: Path, subset: str) -> Path:
    matches = sorted(p for p in Path(config_dir).glob(f"{subset}_*.yaml"))
    if not matches:
        raise ConfigError(f"no config for subset '{subset}' in {config_dir} (expected a file named {subset}_*.yaml)")
    if len(matches) > 1:
        names = ", ".join(p.name for p in matches)
        raise ConfigError(f"several configs for subset '{subset}' in {config_dir} ({names}); keep one per subset")
    return matches[0]


def run_benchmark(config_dir, out_dir, data_11k=None, data_hd=None, subsets=None, overrides=None,
                  zero_shot: bool = True, gallery_all: bool = True, progress: bool = False) -> BenchmarkResult:
    subsets = list(subsets or SUBSETS)
    unknown = [s for s in subsets if s not in SUBSETS]
    if unknown:
        raise ConfigError(f"unknown subset '{unknown[0]}' (choose from {', '.join(SUBSETS)})")
    out_dir = Path(out_dir)
    # Resolve every config before training anything: a typo must not surface after hours of work.
    plans = []
    for subset in subsets:
        root = data_hd if subset == "hd" else data_11k
        if root is None:
            flag = "--data-hd" if subset == "hd" else "--data-11k"
            raise ConfigError(f"subset '{subset}' needs its dataset folder: pass {flag} DIR")
        extra = [f"data.root={root}"]
        if subset != "hd":
            extra.append(f"data.gallery_all={'true' if gallery_all else 'false'}")
        path = find_config(config_dir, subset)
        plans.append((subset, path, load_config(path, extra + list(overrides or []))))

    measured: dict[str, dict] = {}
    zero: dict[str, dict] = {}
    forensic_rows: dict[str, dict[str, dict]] = {"trained": {}, "zero_shot": {}}
    result = BenchmarkResult()
    label = None
    for subset, path, config in plans:
        run = train(config, run_dir=out_dir / subset, progress=progress)
        manifest = Manifest.read(Path(run.run_dir) / "manifest.csv")
        encoder = Encoder.from_checkpoint(run.best_checkpoint, precision=config.runtime.inference_precision)
        label = encoder.label
        evaluated = evaluate_manifest(encoder, manifest, config.eval, progress=progress, keep_distances=True)
        measured[subset] = evaluated.aggregate
        result.runs[subset] = {"config": str(path), "run_dir": str(run.run_dir), "trained": evaluated.as_dict()}
        forensic = forensic_evaluation(evaluated)
        result.runs[subset]["trained"]["forensic"] = forensic.as_dict()
        forensic_rows["trained"][subset] = forensic.aggregate
        if zero_shot:
            # Seeded so a random-init baseline (tiny models, no weights file) is the same on every run.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(config.seed)
                base = build_model(config.model, config.data, num_ids=1).eval()
            base_encoder = Encoder.for_model(base, config.data, precision=config.runtime.inference_precision)
            zs = evaluate_manifest(base_encoder, manifest, config.eval, progress=progress, keep_distances=True)
            zero[subset] = zs.aggregate
            result.runs[subset]["zero_shot"] = zs.as_dict()
            forensic = forensic_evaluation(zs)
            result.runs[subset]["zero_shot"]["forensic"] = forensic.as_dict()
            forensic_rows["zero_shot"][subset] = forensic.aggregate
    backbone = plans[0][2].model.backbone
    weights = plans[0][2].model.weights
    result.rows.append((label or f"HandCLIP ({backbone})", measured))
    if zero_shot:
        source = Path(weights).name if weights else "random init"
        result.rows.append((f"zero-shot {backbone} image features ({source}, no training)", zero))
    runs = sorted({len(r["trained"]["per_run"]) for r in result.runs.values()})
    notes = [f"Measured rows: mean ± std over {'/'.join(map(str, runs))} Monte Carlo runs of each subset's own "
             f"manifest; best checkpoint chosen on the validation split."]
    if any(s != "hd" for s in subsets):
        notes.append("11k: " + ("gallery_all (the aspect's gallery plus the other three aspects' galleries as "
                                "distractors)." if gallery_all else "each aspect's own gallery only (--own-gallery)."))
    if "hd" in subsets:
        notes.append("HD: every gallery includes the 213 distractor identities of 502-712.")
    result.table = benchmark_table(result.rows, notes=notes)
    atomic_write_text(out_dir / "benchmark.md", "# HandCLIP benchmark\n\n" + result.table)
    labelled = [(result.rows[0][0], forensic_rows["trained"])]
    if zero_shot:
        labelled.append((result.rows[1][0], forensic_rows["zero_shot"]))
    result.forensic_table = forensic_benchmark_table(labelled)
    atomic_write_text(out_dir / "benchmark_forensic.md", "# HandCLIP benchmark: forensic figures\n\n"
                      + result.forensic_table)
    atomic_write_json(out_dir / "benchmark.json", {"rows": [{"method": m, "subsets": s} for m, s in result.rows],
                                                  "runs": result.runs})
    return result

"""Training runs: checks, the run folder, both stages, checkpoints and resume.

Run folder (every file written atomically, only by rank 0):
  config.yaml        the resolved configuration
  manifest.csv       copy of the manifest trained on; manifest.sha256 its hash
  used_images.txt    the train + val images actually used (skipped_images.txt: those left out by --skip-bad)
  train.log          human-readable log (rewritten whole at every epoch)
  metrics.jsonl      one JSON object per epoch: stage, epoch, each loss term, lr, val metrics, time
  status.json        {"status": "running" | "completed" | "failed" | "interrupted", "error": ..., "stage", "epoch"}
  .handclip-run      the claim marker: created exclusively, so no two trainings ever share the folder
  best.pt            best checkpoint on the validation split (rank-1, then mAP), saved when it is found
  last.pt            checkpoint after the latest epoch, with the resume state (optimizers, schedules,
                     scaler, sampler epoch, RNG states, history) in its ``extra``

Failure policy: everything that can be checked before training (config, manifest, image scan, batch
layout, backbone and weights) is checked before the run folder is touched, so bad input leaves no
run folder at all (or an untouched one). A failure after that marks status.json "failed" with the
message and the stage that was running, and last.pt / best.pt keep the last good state (a checkpoint
with a non-finite parameter is never written). SIGTERM stops at the next step and marks it "interrupted".

Resume (``handclip train --resume RUN_DIR``) restarts from last.pt at the epoch boundary it records;
on CPU the continued run is bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import torch
from tqdm import tqdm

from ..atomic import atomic_write_text
from ..config import Config, config_from_dict, load_config
from ..data.images import scan_images
from ..data.loaders import build_train_loader
from ..data.manifest import Manifest
from ..datasets import prepare_from_config
from ..errors import ConfigError, DataError, HandCLIPError, TrainingError
from ..evaluate.protocol import evaluate_validation
from ..model.checkpoint import load_checkpoint, save_checkpoint
from ..model.handclip import build_model
from ..model.inference import Encoder
from ..runtime import (
    cache_root,
    resolve_device,
    rng_state,
    seed_everything,
    set_rng_state,
)
from . import distributed as ddp
from .run_folder import (
    RunFolder,
    TerminationWatch,
    Terminated,
    claim_run_folder,
    remove_stale_temporaries,
    verify_resume_manifest,
)
from .stage1 import run_stage1
from .stage2 import run_stage2

STAGES = ("stage1", "stage2")


@dataclass
class RunResult:
    run_dir: Path
    best_checkpoint: Path | None
    last_checkpoint: Path | None
    history: list[dict] = field(default_factory=list)
    best: dict | None = None


def _as_config(config) -> Config:
    if isinstance(config, Config):
        return config
    if config is None:
        return load_config(None)
    if isinstance(config, (str, Path)):
        return load_config(config)
    if isinstance(config, dict):
        return config_from_dict(config)
    raise ConfigError(f"config must be a Config, a YAML path or a dict, not {type(config).__name__}")


def check_training_data(manifest, stage2_cfg, check_batches: bool) -> tuple[list, dict]:
    """Training records and label map; clear errors for identities that cannot form P x K batches."""
    train = manifest.split("train")
    if not train:
        raise DataError("the manifest has no training images (split 'train')")
    counts = Counter(r.pid for r in train)
    thin = sorted(pid for pid, n in counts.items() if n < 2)
    if thin:
        raise DataError(
            f"training identity {thin[0]} has {counts[thin[0]]} training image(s); every training identity needs "
            f"at least 2 for P x K batches ({len(thin)} identit{'y' if len(thin) == 1 else 'ies'} affected)")
    strays = sorted({r.pid for r in manifest.split("val")} - set(counts))
    if strays:
        raise DataError(f"val image(s) of identity {strays[0]} have no training images ({len(strays)} such "
                        f"identit{'y' if len(strays) == 1 else 'ies'}); val holds one image of each training identity")
    if check_batches and stage2_cfg.ids_per_batch > len(counts):
        raise ConfigError(f"stage2.ids_per_batch is {stage2_cfg.ids_per_batch} but the training split has only "
                          f"{len(counts)} identities")
    return train, manifest.train_label_map()


class TrainContext:
    """What the stage loops share: model, data, device, run folder, state and the end-of-epoch bookkeeping."""

    def __init__(self, config: Config, manifest, train_records, label_map, model, device, run: RunFolder,
                 dist_info: ddp.DistInfo, state: dict, progress: bool):
        self.config = config
        self.manifest = manifest
        self.train_records = train_records
        self.label_map = label_map
        self.model = model
        self.device = device
        self.run = run
        self.dist = dist_info
        self.state = state
        self.progress = progress and dist_info.is_main
        self._pending: list[tuple[str, int, int, dict]] = []
        self._ddp_ignored: list[str] = []
        self.current_stage: str | None = state.get("stage")
        self.termination = TerminationWatch()

    # ----- small services -------------------------------------------------------------------------
    @property
    def is_main(self) -> bool:
        return self.dist.is_main

    @property
    def world_size(self) -> int:
        return self.dist.world_size

    def log(self, message: str) -> None:
        if not self.is_main:
            return
        self.run.log(message)
        if self.progress:
            tqdm.write(message)

    def check_finite(self, terms: dict, stage: str, epoch: int, step: int) -> None:
        """Stop on a NaN/inf loss term. On CPU every step; on GPU every 20 steps, to avoid a host sync per step.
        Also where a SIGTERM stops the run: between steps, never in the middle of a checkpoint."""
        self.termination.check()
        self._pending.append((stage, epoch, step, {k: v.detach() for k, v in terms.items()}))
        if self.device.type != "cuda" or len(self._pending) >= 20:
            self.flush_finite_checks()

    def flush_finite_checks(self) -> None:
        pending, self._pending = self._pending, []
        if not pending:
            return
        flags = torch.stack([torch.stack([torch.isfinite(v).all() for v in t.values()]).all() for *_, t in pending])
        if bool(flags.all()):
            return
        for stage, epoch, step, terms in pending:
            for name, value in terms.items():
                if not bool(torch.isfinite(value).all()):
                    raise TrainingError(
                        f"{stage}: loss term '{name}' became {float(value.float().sum())} at epoch {epoch + 1}, "
                        f"step {step + 1}; stopped, last good checkpoint kept ({stability_hint(stage)})")

    def wrap_for_training(self, model):
        if not self.dist.enabled:
            return model
        self._ddp_ignored = [n for n, p in model.named_parameters() if n.startswith("prompt_learner.")]
        return ddp.wrap_ddp(model, self.dist, self.device, self._ddp_ignored)

    def reduce_extra_gradients(self, trainer) -> None:
        if self.dist.enabled and trainer.prompt_trains:
            ddp.average_gradients([p for p in self.model.prompt_learner.parameters() if p.requires_grad])

    def build_train_loader(self):
        s2 = self.config.stage2
        return build_train_loader(self.config.data, self.train_records, self.label_map, s2.ids_per_batch,
                                  s2.images_per_id, seed=self.config.seed, rank=self.dist.rank,
                                  world_size=self.dist.world_size, leftover=s2.sampler_leftover)

    def validate(self) -> dict:
        metrics = None
        if self.is_main:
            encoder = Encoder.for_model(self.model, self.config.data, self.device)
            # RNG-neutral: how often one validates must not change the training run's random stream.
            with torch.random.fork_rng(devices=[]):
                metrics = evaluate_validation(encoder, self.manifest, self.config.eval)
            metrics = {k: float(v) for k, v in metrics.items()}
        return ddp.broadcast_object(metrics, self.dist)

    # ----- checkpoints ----------------------------------------------------------------------------
    def save(self, name: str, extra: dict, epoch: int | None = None) -> Path:
        """Write a checkpoint; refuse (TrainingError) when a parameter is not finite, keeping the last good one."""
        path = self.run.file(name)
        self.check_parameters(name, epoch)
        if self.is_main:
            save_checkpoint(path, self.model, self.config, extra)
        return path

    def check_parameters(self, name: str, epoch: int | None) -> None:
        bad = next((n for n, p in self.model.named_parameters() if not bool(torch.isfinite(p).all())), None)
        if bad is not None:
            stage = self.current_stage or "training"
            when = f" after epoch {epoch}" if epoch is not None else ""
            raise TrainingError(f"{stage}: parameter '{bad}' became non-finite{when}; stopped without saving "
                                f"{name}, last good checkpoint kept ({stability_hint(stage)})")

    def end_epoch(self, stage: str, epoch: int, record: dict, resume_state: dict, validate: bool = False) -> None:
        """Validate, keep the best checkpoint on disk, save last.pt with the resume state, write the logs."""
        state = self.state
        # Before any bookkeeping, so status.json and the history still describe the last good epoch.
        self.check_parameters("last.pt", epoch)
        if validate:
            metrics = self.validate()
            record.update({f"val_{k}": v for k, v in metrics.items()})
            score = (metrics.get("rank1", 0.0), metrics.get("mAP", 0.0))
            best = state.get("best")
            if best is None or score > (best["rank1"], best["mAP"]):
                state["best"] = {"stage": stage, "epoch": epoch, "rank1": score[0], "mAP": score[1]}
                # Saved now, to disk: a "best" model kept by reference would really be the last epoch
                # (docs/method.md, "Pitfalls").
                self.save("best.pt", {"stage": stage, "epoch": epoch, "val": metrics}, epoch)
                record["best"] = True
        total = self.config.stage1.epochs if stage == "stage1" else self.config.stage2.epochs
        state["stage"] = stage
        state["epoch"] = epoch
        if epoch >= total and stage not in state["completed"]:
            state["completed"].append(stage)
        state["history"].append(record)
        self.save("last.pt", {"run_state": state, "resume": resume_state, "rng": rng_state()}, epoch)
        parts = [f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()
                 if k not in ("stage", "epoch")]
        self.log(f"{stage} epoch {epoch}/{total}: " + " ".join(parts))
        if self.is_main:
            self.run.write_metrics(state["history"])
            self.run.flush_log()
            self.run.write_status("running", stage=stage, epoch=epoch)


def stability_hint(stage: str) -> str:
    """What to change when ``stage`` diverged (stage 1 has no gradient clipping)."""
    if stage == "stage1":
        return "lower stage1.lr"
    if stage == "joint":
        return "lower stage1.lr and stage2.lr, or set stage2.grad_clip"
    return "lower stage2.lr or set stage2.grad_clip"


def _dataset_workdir(config: Config) -> Path:
    """Where generated datasets go: one folder per synthetic setting, so settings never mix images."""
    key = hashlib.sha256(json.dumps(config.data.synthetic.model_dump(mode="json"), sort_keys=True).encode())
    return cache_root(config.data) / "datasets" / key.hexdigest()[:16]


def _default_run_dir(config: Config) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return Path(config.output_dir) / f"{config.name}-{stamp}"


def _scan(records, config: Config, run_lines: list[str]) -> tuple[list, list]:
    """Check every image once; stop on problems unless data.skip_bad (then leave those images out)."""
    problems = scan_images(sorted({r.path for r in records}))
    if not problems:
        return list(records), []
    if not config.data.skip_bad:
        first = problems[0]
        raise DataError(f"{len(problems)} unusable image(s), first {first.path}: {first.reason} "
                        f"(fix them or pass --skip-bad / data.skip_bad=true to leave them out)")
    bad = {p.path for p in problems}
    run_lines.extend(f"{p.path}\t{p.reason}" for p in problems)
    return [r for r in records if r.path not in bad], sorted(bad)


def train(config=None, run_dir: str | Path | None = None, stages: Sequence[str] = STAGES,
          resume: str | Path | None = None, device: str | None = None, progress: bool = False) -> RunResult:
    """Train HandCLIP and return where the checkpoints are (see the module docstring for the run folder)."""
    resume_extra = None
    if resume is not None:
        run_path = Path(resume)
        if not (run_path / "config.yaml").is_file():
            raise ConfigError(f"--resume {run_path}: not a HandCLIP run folder (no config.yaml)")
        if not (run_path / "last.pt").is_file():
            raise ConfigError(f"--resume {run_path}: no last.pt to resume from (the run failed before its first epoch)")
        verify_resume_manifest(run_path)
        config = load_config(run_path / "config.yaml")
    else:
        config = _as_config(config)
        run_path = Path(run_dir) if run_dir is not None else _default_run_dir(config)
    unique_name = resume is None and run_dir is None
    stages = tuple(stages)
    for stage in stages:
        if stage not in STAGES:
            raise ConfigError(f"unknown stage '{stage}' (use stage1, stage2 or both)")
    joint = config.runtime.joint
    if joint:
        stages = ("joint",)
    else:
        stages = tuple(s for s in stages if getattr(config, s).enabled)

    dist_info = ddp.init_distributed(device or config.runtime.device)
    try:
        # Every rank uses rank 0's folder name (a default name holds the time, which may differ by a second).
        run_path = Path(ddp.broadcast_object(str(run_path), dist_info))
        if resume is None and not unique_name and (run_path / "config.yaml").exists():
            raise ConfigError(f"run folder {run_path} already holds a run; use --resume {run_path} or another --out")
        device_obj = ddp.device_for(dist_info, resolve_device(device or config.runtime.device))
        if config.runtime.threads:
            torch.set_num_threads(config.runtime.threads)
        seed_everything(config.seed)

        # ---- everything that can fail on user input, before the run folder is touched ----
        if resume is not None:
            manifest = Manifest.read(run_path / "manifest.csv")
        else:
            manifest = prepare_from_config(config.data, _dataset_workdir(config))
        skipped_lines: list[str] = []
        usable, skipped = _scan(manifest.split("train") + manifest.split("val"), config, skipped_lines)
        if skipped:
            manifest = manifest.without_paths(skipped)
        manifest.check_identity_overlap(config.data.allow_id_overlap, "the training manifest",
                                        "set data.allow_id_overlap=true (train --allow-id-overlap)")
        train_records, label_map = check_training_data(manifest, config.stage2,
                                                        check_batches=("stage2" in stages or joint))
        if not manifest.split("val"):
            raise DataError("the manifest has no val split (one held-out image per training identity) to choose "
                            "the best checkpoint on")
        model = build_model(config.model, config.data, len(label_map))
        if resume is not None:
            model, _, resume_extra = load_checkpoint(run_path / "last.pt", map_location="cpu")
        model.to(device_obj)

        # ---- the run folder (all ranks have passed the checks above before rank 0 writes) ----
        ddp.barrier(dist_info)
        if resume is None and dist_info.is_main:
            run_path = claim_run_folder(run_path, unique=unique_name)
        run_path = Path(ddp.broadcast_object(str(run_path), dist_info))
        run = RunFolder(run_path, active=dist_info.is_main)
        if resume is not None:
            if dist_info.is_main:
                remove_stale_temporaries(run_path)
            state = resume_extra["run_state"]
            log_file = run.file("train.log")
            if log_file.is_file():
                run.lines = log_file.read_text(encoding="utf-8").splitlines()
            run.log(f"resumed from last.pt: {state['stage']} epoch {state['epoch']}")
        else:
            state = {"stage": None, "epoch": 0, "completed": [], "history": [], "best": None,
                     "stages": list(stages)}
            if dist_info.is_main:
                atomic_write_text(run.file("config.yaml"), config.to_yaml())
                manifest.write(run.file("manifest.csv"))
                atomic_write_text(run.file("manifest.sha256"), manifest.sha256() + "  manifest.csv\n")
                used = sorted({r.path for r in (*train_records, *manifest.split("val"))})
                atomic_write_text(run.file("used_images.txt"), "".join(p + "\n" for p in used))
                if skipped_lines:
                    atomic_write_text(run.file("skipped_images.txt"), "".join(l + "\n" for l in skipped_lines))
                run.write_status("running", stage=None, epoch=0)
            run.log(f"HandCLIP training: {config.name}; backbone {config.model.backbone}; device {device_obj}; "
                    f"{len(label_map)} training identities, {len(train_records)} images; "
                    f"world size {dist_info.world_size}")
        ctx = TrainContext(config, manifest, train_records, label_map, model, device_obj, run, dist_info, state,
                           progress)
        try:
            with ctx.termination.installed():
                _run_stages(ctx, state["stages"] if resume is not None else list(stages), resume_extra)
        except BaseException as exc:
            if dist_info.is_main:
                interrupted = isinstance(exc, KeyboardInterrupt)
                if interrupted:
                    reason = str(exc) if isinstance(exc, Terminated) else "interrupted"
                    reason += f"; resume with: handclip train --resume {run_path}"
                elif isinstance(exc, HandCLIPError):
                    reason = str(exc)
                else:
                    reason = f"{type(exc).__name__}: {exc}"
                run.log(("INTERRUPTED: " if interrupted else "FAILED: ") + reason)
                # stage: the one that was running (not the last one that saved an epoch); epoch: last saved.
                fields = dict(error=reason, stage=ctx.current_stage or state.get("stage"), epoch=state.get("epoch"))
                with contextlib.suppress(OSError):
                    run.flush_log()
                    run.write_status("interrupted" if interrupted else "failed", **fields)
            raise
        run.log("training completed")
        if dist_info.is_main:
            run.flush_log()
            run.write_status("completed", stage=state.get("stage"), epoch=state.get("epoch"), best=state.get("best"))
        best = run.file("best.pt")
        last = run.file("last.pt")
        return RunResult(run_path, best if best.is_file() else None, last if last.is_file() else None,
                         list(state["history"]), state.get("best"))
    finally:
        ddp.shutdown(dist_info)


def _run_stages(ctx: TrainContext, stages: list[str], resume_extra: dict | None) -> None:
    state = ctx.state
    for stage in stages:
        if stage in state["completed"]:
            continue
        resume = None
        if resume_extra is not None:
            if state["stage"] == stage:
                # Mid-stage: the stage restores the RNG states itself, after every constructor that draws
                # random numbers (those draws were already made before the checkpoint in the original run).
                resume = dict(resume_extra["resume"], _rng=resume_extra["rng"])
            else:
                # The previous stage had finished: continue from its RNG states, then start this stage afresh.
                set_rng_state(resume_extra["rng"])
            resume_extra = None
        ctx.current_stage = stage
        ctx.log(f"{stage}: starting" + (f" from epoch {resume['epoch']}" if resume else ""))
        if stage == "stage1":
            run_stage1(ctx, resume)
        else:
            run_stage2(ctx, resume, joint=(stage == "joint"))

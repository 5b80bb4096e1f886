"""Training runs: checks, the run folder, the stages' recipes in turn, resume and the run's final status.

Each stage is a recipe on the one training loop (``train.loop``): ``train.stage1`` and ``train.stage2``
(which also holds the joint run), and CLIP-HandID's one-stage recipe ``train.single_stage``. Checkpoints,
resume, SIGTERM, the NaN guard, validation and the logs below are the loop's hooks (``train.hooks``),
written once for every recipe.

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
import warnings
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import torch
from tqdm import tqdm

from ..aspects import record_aspect
from ..atomic import atomic_write_text
from ..config import Config, config_from_dict, load_config
from ..data.images import unusable_images, warn_left_out
from ..data.loaders import build_train_loader
from ..data.manifest import Manifest
from ..datasets import prepare_from_config
from ..errors import ConfigError, DataError, HandCLIPError, TrainingWarning
from ..evaluate.protocol import evaluate_validation
from ..model.checkpoint import load_checkpoint, save_checkpoint
from ..model.handclip import build_model
from ..model.inference import Encoder
from ..runtime import cache_root, resolve_device, seed_everything, set_rng_state
from . import distributed as ddp
from .hooks import check_parameters
from .notices import best_checkpoint_notice, interruption_message, setting_notices
from .run_folder import (
    Interrupted,
    RunFolder,
    TerminationWatch,
    Terminated,
    claim_run_folder,
    remove_stale_temporaries,
    verify_resume_manifest,
)
from .single_stage import run_single_stage
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
                          f"{len(counts)} identities (--set stage2.ids_per_batch={len(counts)} or fewer)")
    return train, manifest.train_label_map()


def check_training_aspects(manifest, model_cfg, augment_cfg) -> None:
    """A model that reads aspects (model.sie: aspect) or learns them (model.aspect_head) needs the aspect of
    every train and val image (the manifest's subset/camid, docs/method.md "Aspects of a hand")."""
    if model_cfg.sie == "none" and not model_cfg.aspect_head:
        return
    key = "model.sie: aspect" if model_cfg.sie != "none" else "model.aspect_head"
    if augment_cfg.hflip_p > 0:
        raise ConfigError(f"{key} learns which side a hand is, but data.augment.hflip_p {augment_cfg.hflip_p} "
                          f"mirrors training images without changing their aspect (a left hand labelled right); "
                          f"set data.augment.hflip_p: 0")
    for rec in (*manifest.split("train"), *manifest.split("val")):
        if record_aspect(rec) is None:
            raise DataError(f"{key} needs each training image's aspect, but {rec.path} has none (prepare the data "
                            f"with `prepare synthetic --aspects ...` or `prepare 11k --aspect ...`)")


class TrainContext:
    """What a training recipe works on: model, data, device, distributed setup, run folder and run state
    (``state``: stage, epoch, completed stages, history, best), plus the services its hooks use
    (``log``, ``validate``, ``save``). The recipes and their hooks: ``train.stage1``, ``train.stage2``,
    ``train.hooks``."""

    def __init__(self, config: Config, manifest, train_records, label_map, model, device, run: RunFolder,
                 dist_info: ddp.DistInfo, state: dict, progress: bool, echo: bool | None = None):
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
        # Log lines (an epoch's summary, warnings) on the console too: above the bars, or alone without them.
        self.echo = (progress if echo is None else echo) and dist_info.is_main
        self._ddp_ignored: list[str] = []
        self.current_stage: str | None = state.get("stage")
        self.termination = TerminationWatch()

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
        elif self.echo:
            print(message, flush=True)

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
            encoder = Encoder.for_model(self.model, self.config.data, self.device,
                                        precision=self.config.runtime.inference_precision)
            # RNG-neutral: how often one validates must not change the training run's random stream.
            with torch.random.fork_rng(devices=[]):
                metrics = evaluate_validation(encoder, self.manifest, self.config.eval)
            metrics = {k: float(v) for k, v in metrics.items()}
        return ddp.broadcast_object(metrics, self.dist)

    def save(self, name: str, extra: dict, epoch: int | None = None) -> Path:
        """Write a checkpoint; refuse (TrainingError) when a parameter is not finite, keeping the last good one."""
        path = self.run.file(name)
        check_parameters(self.model, self.current_stage or "training", name, epoch)
        if self.is_main:
            save_checkpoint(path, self.model, self.config, extra)
        return path


def _dataset_workdir(config: Config) -> Path:
    """Where generated datasets go: one folder per synthetic setting, so settings never mix images."""
    settings = config.data.synthetic.model_dump(mode="json")
    if settings["aspects"] == ["dorsal_r"]:
        del settings["aspects"]  # the default: the same folder as before aspects could be chosen
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    return cache_root(config.data) / "datasets" / key.hexdigest()[:16]


def _default_run_dir(config: Config) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return Path(config.output_dir) / f"{config.name}-{stamp}"


def _scan(records, config: Config, run_lines: list[str]) -> tuple[list, list]:
    """Check every image once; stop on problems unless data.skip_bad (--skip-bad: then each is named in a
    warning and left out)."""
    problems = unusable_images(sorted({r.path for r in records}), config.data.skip_bad, "training ")
    if not problems:
        return list(records), []
    warn_left_out(problems, "training", "skipped_images.txt in the run folder")
    bad = {p.path for p in problems}
    run_lines.extend(f"{p.path}\t{p.reason}" for p in problems)
    return [r for r in records if r.path not in bad], sorted(bad)


@dataclass
class _Inputs:
    """What a run trains on, checked before the run folder is touched."""
    manifest: Manifest
    train_records: list
    label_map: dict
    model: torch.nn.Module
    skipped_lines: list[str]
    resume_extra: dict | None


def train(config=None, run_dir: str | Path | None = None, stages: Sequence[str] = STAGES,
          resume: str | Path | None = None, device: str | None = None, progress: bool = False,
          echo: bool | None = None) -> RunResult:
    """Train HandCLIP and return where the checkpoints are (see the module docstring for the run folder).

    ``progress``: progress bars; ``echo``: the log's lines (each epoch's summary, warnings) on stdout too
    (default: when ``progress``). Settings worth a second look are ``handclip.errors.TrainingWarning``
    warnings, also written to train.log; a run stopped by Ctrl-C or SIGTERM raises ``Interrupted``, whose
    message is the command that resumes it."""
    config, run_path = _resolve_run(config, run_dir, resume)
    unique_name = resume is None and run_dir is None
    stages = _stages_to_run(config, stages)
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
        inputs = _checked_inputs(config, run_path if resume is not None else None, stages)
        inputs.model.to(device_obj)
        notices = setting_notices(config, inputs.manifest) if resume is None and dist_info.is_main else []
        for notice in notices:
            warnings.warn(notice, TrainingWarning, stacklevel=2)

        # The run folder: all ranks have passed the checks above before rank 0 writes.
        ddp.barrier(dist_info)
        if resume is None and dist_info.is_main:
            run_path = claim_run_folder(run_path, unique=unique_name)
        run_path = Path(ddp.broadcast_object(str(run_path), dist_info))
        run = RunFolder(run_path, active=dist_info.is_main)
        if inputs.resume_extra is not None:
            state = _reopen_run_folder(run, inputs.resume_extra)
        else:
            state = _start_run_folder(run, config, inputs, stages, device_obj, dist_info)
        for notice in notices:
            run.log(f"warning: {notice}")
        ctx = TrainContext(config, inputs.manifest, inputs.train_records, inputs.label_map, inputs.model, device_obj,
                           run, dist_info, state, progress, echo)
        ran = state["stages"] if resume is not None else list(stages)
        _run_recipes(ctx, ran, inputs.resume_extra)
        late = best_checkpoint_notice(state, ran) if dist_info.is_main else None
        if late:
            warnings.warn(late, TrainingWarning, stacklevel=2)
            run.log(f"warning: {late}")
            run.flush_log()
        best, last = run.file("best.pt"), run.file("last.pt")
        return RunResult(run_path, best if best.is_file() else None, last if last.is_file() else None,
                         list(state["history"]), state.get("best"))
    finally:
        ddp.shutdown(dist_info)


def _resolve_run(config, run_dir, resume) -> tuple[Config, Path]:
    """The configuration and run folder: a resumed run's own, or the given config and folder (or a fresh name)."""
    if resume is None:
        config = _as_config(config)
        return config, Path(run_dir) if run_dir is not None else _default_run_dir(config)
    run_path = Path(resume)
    if not (run_path / "config.yaml").is_file():
        raise ConfigError(f"--resume {run_path}: not a HandCLIP run folder (no config.yaml)")
    if not (run_path / "last.pt").is_file():
        raise ConfigError(f"--resume {run_path}: no last.pt to resume from (the run failed before its first epoch)")
    verify_resume_manifest(run_path)
    return load_config(run_path / "config.yaml"), run_path


def _stages_to_run(config: Config, stages: Sequence[str]) -> tuple[str, ...]:
    stages = tuple(stages)
    for stage in stages:
        if stage not in STAGES:
            raise ConfigError(f"unknown stage '{stage}' (use stage1, stage2 or both)")
    if config.single_stage.enabled:
        if config.runtime.joint:
            raise ConfigError("runtime.joint and single_stage.enabled are two different recipes; set one of them")
        if config.model.sie != "none" or config.model.aspect_head:
            # The one-stage recipe feeds no aspects to the model (docs/method.md, "Aspects of a hand").
            raise ConfigError("model.sie: aspect and model.aspect_head train with the two-stage recipe; "
                              "single_stage.enabled feeds no aspects (set single_stage.enabled: false)")
        return ("single_stage",)
    if config.runtime.joint:
        return ("joint",)
    return tuple(s for s in stages if getattr(config, s).enabled)


def _checked_inputs(config: Config, resumed_run: Path | None, stages: tuple[str, ...]) -> _Inputs:
    """Everything that can fail on user input, before the run folder is touched: manifest, images,
    identities, batch layout, backbone and weights (a resumed run's model comes from its last.pt)."""
    if resumed_run is not None:
        manifest = Manifest.read(resumed_run / "manifest.csv")
    else:
        manifest = prepare_from_config(config.data, _dataset_workdir(config))
    skipped_lines: list[str] = []
    _, skipped = _scan(manifest.split("train") + manifest.split("val"), config, skipped_lines)
    if skipped:
        manifest = manifest.without_paths(skipped)
    manifest.check_identity_overlap(config.data.allow_id_overlap, "the training manifest",
                                    "set data.allow_id_overlap=true (train --allow-id-overlap)")
    train_records, label_map = check_training_data(manifest, config.stage2,
                                                   check_batches=("stage2" in stages or "joint" in stages))
    check_training_aspects(manifest, config.model, config.data.augment)
    if not manifest.split("val"):
        raise DataError("the manifest has no val split (one held-out image per training identity) to choose "
                        "the best checkpoint on")
    # Built on resume too: its random draws are part of the run's random stream.
    model = build_model(config.model, config.data, len(label_map))
    resume_extra = None
    if resumed_run is not None:
        model, _, resume_extra = load_checkpoint(resumed_run / "last.pt", map_location="cpu")
    return _Inputs(manifest, train_records, label_map, model, skipped_lines, resume_extra)


def _start_run_folder(run: RunFolder, config: Config, inputs: _Inputs, stages, device, dist_info) -> dict:
    """Write a new run's config, manifest and image lists, and return its fresh run state."""
    state = {"stage": None, "epoch": 0, "completed": [], "history": [], "best": None, "stages": list(stages)}
    if dist_info.is_main:
        manifest = inputs.manifest
        atomic_write_text(run.file("config.yaml"), config.to_yaml())
        manifest.write(run.file("manifest.csv"))
        atomic_write_text(run.file("manifest.sha256"), manifest.sha256() + "  manifest.csv\n")
        used = sorted({r.path for r in (*inputs.train_records, *manifest.split("val"))})
        atomic_write_text(run.file("used_images.txt"), "".join(p + "\n" for p in used))
        if inputs.skipped_lines:
            atomic_write_text(run.file("skipped_images.txt"), "".join(l + "\n" for l in inputs.skipped_lines))
        run.write_status("running", stage=None, epoch=0)
    run.log(f"HandCLIP training: {config.name}; backbone {config.model.backbone}; device {device}; "
            f"{len(inputs.label_map)} training identities, {len(inputs.train_records)} images; "
            f"world size {dist_info.world_size}")
    return state


def _reopen_run_folder(run: RunFolder, resume_extra: dict) -> dict:
    """Continue a run folder's log and return the run state its last.pt recorded."""
    if run.active:
        remove_stale_temporaries(run.path)
    state = resume_extra["run_state"]
    log_file = run.file("train.log")
    if log_file.is_file():
        run.lines = log_file.read_text(encoding="utf-8").splitlines()
    run.log(f"resumed from last.pt: {state['stage']} epoch {state['epoch']}")
    return state


def _run_recipes(ctx: TrainContext, stages: list[str], resume_extra: dict | None) -> None:
    """Run the stages under the SIGTERM watch; mark status.json completed, failed or interrupted."""
    run, state = ctx.run, ctx.state
    try:
        with ctx.termination.installed():
            _run_stages(ctx, stages, resume_extra)
    except BaseException as exc:
        interrupted = isinstance(exc, KeyboardInterrupt)
        reason = None
        if ctx.is_main:
            if interrupted:
                reason = interruption_message(str(exc) if isinstance(exc, Terminated) else "interrupted (Ctrl-C)",
                                              run.path)
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
        if reason is not None and interrupted:
            raise Interrupted(reason, getattr(exc, "exit_code", 130)) from exc
        raise
    run.log("training completed")
    if ctx.is_main:
        run.flush_log()
        run.write_status("completed", stage=state.get("stage"), epoch=state.get("epoch"), best=state.get("best"))


def _run_stages(ctx: TrainContext, stages: list[str], resume_extra: dict | None) -> None:
    """Run each stage's recipe in turn, skipping completed ones; a resumed run continues mid-stage."""
    state = ctx.state
    for stage in stages:
        if stage in state["completed"]:
            continue
        resume = None
        if resume_extra is not None:
            if state["stage"] == stage:
                # Mid-stage: the recipe's Checkpoint hook restores the RNG states (``_rng``) after every
                # constructor that draws random numbers.
                resume = dict(resume_extra["resume"], _rng=resume_extra["rng"])
            else:
                # The previous stage had finished: continue from its RNG states, then start this stage afresh.
                set_rng_state(resume_extra["rng"])
            resume_extra = None
        ctx.current_stage = stage
        ctx.log(f"{stage}: starting" + (f" from epoch {resume['epoch']}" if resume else ""))
        if stage == "stage1":
            run_stage1(ctx, resume)
        elif stage == "single_stage":
            run_single_stage(ctx, resume)
        else:
            run_stage2(ctx, resume, joint=(stage == "joint"))

"""What a training run tells its user in one line each, rather than leaving a silent trap: settings it
ignores, random weights where published ones exist, a validation split too small to choose a checkpoint
on, best.pt from stage 1, and how to resume a stopped run."""

from __future__ import annotations

import shlex
from pathlib import Path

import open_clip

from ..config import Config
from ..preflight import ignored_settings

# Below this many val images a rank-1 step (1/N) is large enough that best.pt is chosen on noise.
SMALL_VAL_IMAGES = 50


def setting_notices(config: Config, manifest) -> list[str]:
    """The warnings a fresh run gives before it starts (see the module docstring)."""
    notes = list(ignored_settings(config, "train", {r.dataset for r in manifest.records}))
    backbone = config.model.backbone
    if not config.model.weights:
        tags = open_clip.list_pretrained_tags_by_model(backbone)
        if tags:
            notes.append(f"model.weights is not set: {backbone} starts from random weights, although published ones "
                         f"exist (open_clip tags {', '.join(tags[:3])}); CLIP-ReID fine-tunes pretrained weights, and "
                         f"from random ones it needs far more data and epochs. Give a local file: "
                         f"--set model.weights=/path/to/{backbone}.pt")
    val = len(manifest.split("val"))
    if 0 < val < SMALL_VAL_IMAGES:
        notes.append(f"the validation split has only {val} images (one per training identity): best.pt is "
                     f"chosen on rank-1 steps of {1 / val:.3f}, so it may be chosen on chance; evaluate last.pt "
                     f"too, or train on more identities")
    return notes


def best_checkpoint_notice(state: dict, stages) -> str | None:
    """A warning when best.pt is from stage 1 although stage 2 ran: every stage-2 epoch validated worse."""
    best = state.get("best") or {}
    ran_stage2 = "stage2" in stages and "stage2" in state.get("completed", [])
    if best.get("stage") != "stage1" or not ran_stage2:
        return None
    epochs = sum(1 for record in state.get("history", []) if record.get("stage") == "stage2")
    return (f"best.pt is from stage 1 epoch {best.get('epoch')} (val rank-1 {best.get('rank1', 0):.3f}): none of the "
            f"{epochs} stage-2 epochs validated better, so best.pt holds none of their training (last.pt does). "
            f"Look at the stage-2 losses in train.log; stage2.lr or stage2.epochs may not suit this data")


def resume_command(run_path: Path) -> str:
    """The exact command that continues the run in ``run_path``."""
    return f"handclip train --resume {shlex.quote(str(run_path))}"


def interruption_message(reason: str, run_path: Path) -> str:
    """Why the run stopped and what to type next: resume it from last.pt, or start it again when it stopped
    before its first epoch ended (there is no last.pt to resume from)."""
    if (run_path / "last.pt").is_file():
        return f"{reason}; resume with: {resume_command(run_path)}"
    return (f"{reason} before the first epoch ended, so there is nothing to resume; remove "
            f"{shlex.quote(str(run_path))} and run the same command again")


__all__ = ["SMALL_VAL_IMAGES", "best_checkpoint_notice", "interruption_message", "resume_command",
           "setting_notices"]

"""The run folder of one training: claimed exclusively, checked on resume, logs and status, SIGTERM.

A run folder belongs to exactly one training. It is claimed by creating its ``.handclip-run`` marker
with O_CREAT | O_EXCL, which the file system grants to one process only, so two trainings started in
the same second (same default, timestamped name, or the same ``--out``) can never share a folder: a
default name moves on to ``NAME-2``, ``NAME-3``, ...; an explicit folder is refused.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
from datetime import datetime, timezone
from pathlib import Path

from ..atomic import atomic_write_json, atomic_write_text, sha256_file, write_error
from ..errors import ConfigError, DataError
from .loop import Hook, TrainLoop

CLAIM_NAME = ".handclip-run"
# Temporary files an interrupted checkpoint or log write can leave (atomic_open's ".NAME.XXXX.tmp").
_TEMP_PREFIXES = (".last.pt.", ".best.pt.", ".train.log.", ".metrics.jsonl.", ".status.json.")


class RunFolder:
    """The files of one run; a no-op writer on ranks other than 0."""

    def __init__(self, path: Path, active: bool = True):
        self.path = Path(path)
        self.active = active
        self.lines: list[str] = []

    def file(self, name: str) -> Path:
        return self.path / name

    def log(self, message: str) -> None:
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        self.lines.append(f"{stamp} {message}")

    def flush_log(self) -> None:
        if self.active:
            atomic_write_text(self.file("train.log"), "\n".join(self.lines) + "\n")

    def write_metrics(self, history: list[dict]) -> None:
        if self.active:
            atomic_write_text(self.file("metrics.jsonl"), "".join(json.dumps(r, sort_keys=True) + "\n" for r in history))

    def write_status(self, status: str, **fields) -> None:
        if self.active:
            atomic_write_json(self.file("status.json"), {"status": status, **fields})


def claim_run_folder(path: Path, unique: bool) -> Path:
    """Create and claim ``path`` for this training; with ``unique``, the first free ``path``, ``path-2``, ..."""
    candidates = [path] + ([path.with_name(f"{path.name}-{n}") for n in range(2, 1000)] if unique else [])
    for candidate in candidates:
        try:
            candidate.mkdir(parents=True, exist_ok=True)
            fd = os.open(candidate / CLAIM_NAME, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            if candidate.is_dir() and unique:
                continue
            if candidate.is_dir():
                raise ConfigError(f"run folder {candidate} is already taken by another training; use "
                                  f"--resume {candidate} or another --out") from None
            raise write_error(FileExistsError(17, "File exists"), candidate / CLAIM_NAME) from None
        except OSError as exc:
            raise write_error(exc, candidate / CLAIM_NAME) from None
        try:
            os.write(fd, f"{os.getpid()}\n".encode())
        finally:
            os.close(fd)
        if (candidate / "config.yaml").exists():
            # A run from before claim markers existed: not ours to write into.
            (candidate / CLAIM_NAME).unlink(missing_ok=True)
            if unique:
                continue
            raise ConfigError(f"run folder {candidate} already holds a run; use --resume {candidate} or another --out")
        return candidate
    raise ConfigError(f"no free run folder name next to {path} (1000 taken); choose --out or another name")


def verify_resume_manifest(run_path: Path) -> None:
    """Refuse to resume when manifest.csv is not the file the run started on (manifest.sha256)."""
    manifest, recorded = run_path / "manifest.csv", run_path / "manifest.sha256"
    if not manifest.is_file():
        raise DataError(f"--resume {run_path}: manifest.csv is missing; the run cannot continue on the same data")
    if not recorded.is_file():
        raise DataError(f"--resume {run_path}: manifest.sha256 is missing, so manifest.csv cannot be checked")
    fields = recorded.read_text(encoding="utf-8", errors="replace").split()
    if not fields or fields[0] != sha256_file(manifest):
        raise DataError(f"--resume {run_path}: manifest.csv changed since the run started (its SHA-256 differs "
                        f"from manifest.sha256); restore it, or start a new run on the new manifest")


def remove_stale_temporaries(run_path: Path) -> None:
    """Remove what an interrupted atomic write of this run left (only HandCLIP's own temporary names)."""
    for entry in run_path.iterdir():
        if entry.name.startswith(_TEMP_PREFIXES) and entry.name.endswith(".tmp") and entry.is_file():
            entry.unlink(missing_ok=True)


class Terminated(KeyboardInterrupt):
    """The process was asked to stop (SIGTERM); raised at the next training step, never mid-write."""

    exit_code = 143


class Interrupted(KeyboardInterrupt):
    """A training run stopped by Ctrl-C or SIGTERM; the message says how to resume it, ``exit_code`` is the
    shell's (130 for SIGINT, 143 for SIGTERM)."""

    def __init__(self, message: str, exit_code: int = 130):
        super().__init__(message)
        self.exit_code = exit_code


class TerminationWatch(Hook):
    """Turns SIGTERM into ``Terminated`` at a safe point: ``check()`` raises once a signal came.

    Installed for a whole training run (``installed``), and a hook of every training loop in it: the run
    stops before the next step, never in the middle of a checkpoint. A second SIGTERM stops at once (the
    atomic writes still leave no half file behind them).
    """

    def __init__(self):
        self.requested = False

    def _handle(self, signum, frame):
        if self.requested:
            raise Terminated("stopped by a second SIGTERM")
        self.requested = True

    def check(self) -> None:
        if self.requested:
            raise Terminated("stopped by SIGTERM")

    def before_step(self, loop: TrainLoop) -> None:
        self.check()

    @contextlib.contextmanager
    def installed(self):
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = signal.signal(signal.SIGTERM, self._handle)
        try:
            yield self
        finally:
            signal.signal(signal.SIGTERM, previous)

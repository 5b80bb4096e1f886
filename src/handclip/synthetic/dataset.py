"""The synthetic dataset: rendered hands written to a folder per identity, split by the shared
protocol machinery, and registered in ``handclip.data.registry`` as ``synthetic`` (docs/method.md,
"Synthetic hands").
"""

from __future__ import annotations

import io
import json
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from PIL import Image
from pydantic import ValidationError

from ..atomic import atomic_write_bytes, atomic_write_json
from ..config import SyntheticConfig
from ..data.manifest import Manifest
from ..data.registry import DatasetSpec, Option, register_dataset, root_arg
from ..data.splits import (
    Identity,
    absolute,
    check_common,
    check_images_exist,
    split_identities,
    split_records,
    split_rng,
)
from ..errors import DataError
from .render import RENDERER_VERSION, render_hand

MARKER_NAME = ".handclip_synthetic.json"
# Below this many images, starting worker processes costs more than it saves.
PARALLEL_MIN_IMAGES = 256
# A synthetic set beyond this would take hours to render and gigabytes of disk.
MAX_SYNTHETIC_IMAGES = 200_000
_SYNTH_CODE = 31


def _png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _worker_count() -> int:
    from ..runtime import available_cpus  # here: handclip.runtime loads torch, which building the CLI must not

    return min(4, available_cpus())


def _write_identity(job) -> None:
    out, identity, images_per_id, size, seed = job
    folder = out / f"{identity:04d}"
    for n in range(images_per_id):
        atomic_write_bytes(folder / f"{n:03d}.png", _png_bytes(render_hand(identity, n, size, seed)))


def write_synthetic_dataset(out_dir, num_ids: int, images_per_id: int, size: int = 64, seed: int = 0) -> Path:
    """Render ``num_ids`` x ``images_per_id`` hands into ``out_dir/<id:04d>/<n:03d>.png``.

    A marker file records the parameters; if it matches and every image exists, nothing is redone.
    With other parameters the folder is re-rendered (stale identity folders are removed).
    """
    if num_ids < 1 or images_per_id < 1:
        raise DataError(f"synthetic dataset needs at least one identity and one image each, got {num_ids} x {images_per_id}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DataError(f"synthetic output path {out} exists and is not a folder")
    params = {
        "num_ids": int(num_ids),
        "images_per_id": int(images_per_id),
        "size": int(size),
        "seed": int(seed),
        "renderer_version": RENDERER_VERSION,
    }
    marker = out / MARKER_NAME
    expected = [out / f"{i:04d}" / f"{n:03d}.png" for i in range(num_ids) for n in range(images_per_id)]
    if marker.is_file():
        try:
            previous = json.loads(marker.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            previous = None
        if previous == params and all(p.is_file() for p in expected):
            return out
    # Remove the marker first, so an interrupted re-render is never mistaken for a complete one.
    marker.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    wanted = {f"{i:04d}" for i in range(num_ids)}
    for child in out.iterdir():
        if child.is_dir() and len(child.name) == 4 and child.name.isdigit() and child.name not in wanted:
            for f in child.glob("*.png"):
                f.unlink()
            if not any(child.iterdir()):
                child.rmdir()
    for i in range(num_ids):
        folder = out / f"{i:04d}"
        for f in folder.glob("*.png") if folder.is_dir() else []:
            if not (f.stem.isdigit() and int(f.stem) < images_per_id and len(f.stem) == 3):
                f.unlink()
    jobs = [(out, i, images_per_id, size, seed) for i in range(num_ids)]
    workers = min(_worker_count(), num_ids) if num_ids * images_per_id >= PARALLEL_MIN_IMAGES else 1
    if workers > 1:
        # Rendering is CPU-bound Python and each atomic write waits on fsync: separate processes
        # overlap both. Images depend only on (identity, sample, size, seed), so order is irrelevant.
        context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            list(pool.map(_write_identity, jobs, chunksize=max(1, num_ids // (workers * 4))))
    else:
        for job in jobs:
            _write_identity(job)
    atomic_write_json(marker, params)
    return out



def prepare_synthetic(out_dir, synthetic_cfg, runs: int = 10, seed: int = 0) -> Manifest:
    """Render procedural hands into ``out_dir`` (skipped if already there) and split them.

    The first ``synthetic_cfg.train_ids`` identities are training identities, the next
    ``test_ids`` test identities. ``synthetic_cfg.seed`` fixes the images, ``seed`` the splits.
    """
    check_common(runs, seed, "error")
    if out_dir is None or str(out_dir) == "":
        raise DataError("synthetic dataset: no output folder given")
    out = absolute(out_dir)
    num_ids = synthetic_cfg.train_ids + synthetic_cfg.test_ids
    per_id = synthetic_cfg.images_per_id
    if per_id < 2:
        raise DataError(f"synthetic images_per_id must be >= 2 for a val/query split (got {per_id})")
    if num_ids * per_id > MAX_SYNTHETIC_IMAGES:
        raise DataError(f"synthetic dataset of {num_ids} identities x {per_id} images is more than "
                        f"{MAX_SYNTHETIC_IMAGES} images; ask for fewer identities or images per identity")
    write_synthetic_dataset(out, num_ids, per_id, size=synthetic_cfg.image_size, seed=synthetic_cfg.seed)
    idents = [Identity(i, f"{i:04d}", [str(out / f"{i:04d}" / f"{n:03d}.png") for n in range(per_id)])
              for i in range(num_ids)]
    check_images_exist([p for ident in idents for p in ident.paths], out)
    split = split_identities(idents[:synthetic_cfg.train_ids], idents[synthetic_cfg.train_ids:], runs,
                             split_rng(seed, _SYNTH_CODE), "synthetic dataset", "error")
    return Manifest(split_records(split, "synthetic", "synthetic"), source=f"synthetic manifest for {out}")


# The prepare options whose values become SyntheticConfig fields (--seed is the split seed and the image seed).
_CONFIG_FLAGS = {"train_ids": "--train-ids", "test_ids": "--test-ids", "images_per_id": "--images-per-id",
                 "image_size": "--size", "seed": "--seed"}


@register_dataset("synthetic")
class SyntheticHands(DatasetSpec):
    """Procedural hands rendered on the fly (no download)."""

    options = (
        Option("--test-ids", "number of test identities (default 50)"),
        Option("--train-ids", "training identities (default 100)", {"type": int}),
        Option("--images-per-id", "images per identity (default 8)", {"type": int}),
        Option("--size", "image side in pixels (default 64)", {"type": int}),
    )

    def from_config(self, data_cfg, workdir) -> Manifest:
        """Images are rendered into ``data_cfg.root`` when given, else ``<workdir>/synthetic``."""
        out_dir = data_cfg.root or (absolute(workdir) / "synthetic")
        return prepare_synthetic(out_dir, data_cfg.synthetic, runs=data_cfg.runs, seed=data_cfg.split_seed)

    def from_args(self, args) -> Manifest:
        values = {"train_ids": args.train_ids, "test_ids": args.test_ids, "images_per_id": args.images_per_id,
                  "image_size": args.size}
        given = {k: _whole_number(v, _CONFIG_FLAGS[k]) for k, v in values.items() if v is not None}
        try:
            cfg = SyntheticConfig(seed=args.seed, **given)
        except ValidationError as exc:
            err = exc.errors()[0]
            raise DataError(f"{_CONFIG_FLAGS.get(str(err['loc'][0]), err['loc'][0])}: {err['msg']} "
                            f"(got {err.get('input')!r})") from None
        return prepare_synthetic(root_arg(args), cfg, runs=args.runs, seed=args.seed)


def _whole_number(value, flag: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise DataError(f"{flag} {value!r} is not a whole number") from None


__all__ = ["MARKER_NAME", "prepare_synthetic", "write_synthetic_dataset"]

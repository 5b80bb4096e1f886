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
from ..aspects import aspect_index, parse_aspects
from ..data.manifest import Manifest, with_aspect
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


DEFAULT_ASPECTS = ("dorsal_r",)


def image_path(out: Path, identity: int, sample: int, aspect: str, aspects: tuple[str, ...]) -> Path:
    """Where an image goes: ``<id>/<n>.png`` for the right-dorsal-only set (the layout it always had),
    ``<id>/<aspect>/<n>.png`` when several aspects (or another one) are drawn."""
    folder = out / f"{identity:04d}"
    if tuple(aspects) != DEFAULT_ASPECTS:
        folder = folder / aspect
    return folder / f"{sample:03d}.png"


def _write_identity(job) -> None:
    out, identity, images_per_id, size, seed, aspects = job
    for aspect in aspects:
        for n in range(images_per_id):
            atomic_write_bytes(image_path(out, identity, n, aspect, aspects),
                               _png_bytes(render_hand(identity, n, size, seed, aspect)))


def _remove_stale(out: Path, expected: set[Path]) -> None:
    """Delete the images under identity folders that this set does not hold, and folders left empty."""
    for child in out.iterdir():
        if not (child.is_dir() and len(child.name) == 4 and child.name.isdigit()):
            continue
        for image in sorted(child.rglob("*.png")):
            if image not in expected:
                image.unlink()
        for folder in sorted((p for p in child.rglob("*") if p.is_dir()), reverse=True) + [child]:
            if not any(folder.iterdir()):
                folder.rmdir()


def write_synthetic_dataset(out_dir, num_ids: int, images_per_id: int, size: int = 64, seed: int = 0,
                            aspects: tuple[str, ...] = DEFAULT_ASPECTS) -> Path:
    """Render ``num_ids`` x ``images_per_id`` hands per aspect into ``out_dir`` (layout: ``image_path``).

    A marker file records the parameters; if it matches and every image exists, nothing is redone.
    With other parameters the folder is re-rendered (stale images and identity folders are removed).
    """
    if num_ids < 1 or images_per_id < 1:
        raise DataError(f"synthetic dataset needs at least one identity and one image each, got {num_ids} x {images_per_id}")
    aspects = parse_aspects(aspects, "synthetic aspects")
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
    if aspects != DEFAULT_ASPECTS:
        params["aspects"] = list(aspects)
    marker = out / MARKER_NAME
    expected = [image_path(out, i, n, a, aspects) for i in range(num_ids) for a in aspects for n in range(images_per_id)]
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
    _remove_stale(out, set(expected))
    jobs = [(out, i, images_per_id, size, seed, aspects) for i in range(num_ids)]
    images = num_ids * images_per_id * len(aspects)
    workers = min(_worker_count(), num_ids) if images >= PARALLEL_MIN_IMAGES else 1
    if workers > 1:
        # Rendering is CPU-bound Python and each atomic write waits on fsync: separate processes
        # overlap both. Images depend only on (identity, sample, size, seed, aspect), so order is irrelevant.
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
    aspects = tuple(synthetic_cfg.aspects)
    if num_ids * per_id * len(aspects) > MAX_SYNTHETIC_IMAGES:
        raise DataError(f"synthetic dataset of {num_ids} identities x {per_id} images x {len(aspects)} aspects is "
                        f"more than {MAX_SYNTHETIC_IMAGES} images; ask for fewer")
    write_synthetic_dataset(out, num_ids, per_id, size=synthetic_cfg.image_size, seed=synthetic_cfg.seed,
                            aspects=aspects)
    if aspects == DEFAULT_ASPECTS:
        return _split_one_aspect(out, synthetic_cfg, runs, seed)
    return _split_aspects(out, synthetic_cfg, aspects, runs, seed)


def _split_one_aspect(out: Path, synthetic_cfg, runs: int, seed: int) -> Manifest:
    """The right-dorsal-only set, split as it always was (subset ``synthetic``, no camid)."""
    num_ids, per_id = synthetic_cfg.train_ids + synthetic_cfg.test_ids, synthetic_cfg.images_per_id
    idents = [Identity(i, f"{i:04d}", [str(out / f"{i:04d}" / f"{n:03d}.png") for n in range(per_id)])
              for i in range(num_ids)]
    check_images_exist([p for ident in idents for p in ident.paths], out)
    split = split_identities(idents[:synthetic_cfg.train_ids], idents[synthetic_cfg.train_ids:], runs,
                             split_rng(seed, _SYNTH_CODE), "synthetic dataset", "error")
    return Manifest(split_records(split, "synthetic", "synthetic"), source=f"synthetic manifest for {out}")


def _split_aspects(out: Path, synthetic_cfg, aspects: tuple[str, ...], runs: int, seed: int) -> Manifest:
    """Several aspects: each split on its own as 11k's aspects are (its val image and gallery i per
    identity, from its own random stream), one identity (pid) across its aspects, each record marked
    with its aspect (subset, and the aspect's index as camid)."""
    num_ids, per_id = synthetic_cfg.train_ids + synthetic_cfg.test_ids, synthetic_cfg.images_per_id
    records = []
    for aspect in aspects:
        idents = [Identity(i, f"{i:04d}", [str(image_path(out, i, n, aspect, aspects)) for n in range(per_id)])
                  for i in range(num_ids)]
        check_images_exist([p for ident in idents for p in ident.paths], out)
        split = split_identities(idents[:synthetic_cfg.train_ids], idents[synthetic_cfg.train_ids:], runs,
                                 split_rng(seed, _SYNTH_CODE, 1 + aspect_index(aspect)), f"synthetic {aspect}", "error")
        records += [with_aspect(rec, aspect) for rec in split_records(split, "synthetic", aspect)]
    return Manifest(records, source=f"synthetic manifest for {out} ({', '.join(aspects)})")


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
        Option("--aspects", "hand aspects to draw, comma-separated: dorsal_r,dorsal_l,palmar_r,palmar_l "
                            "(default dorsal_r; several give one manifest, camid = aspect index)"),
    )

    def from_config(self, data_cfg, workdir) -> Manifest:
        """Images are rendered into ``data_cfg.root`` when given, else ``<workdir>/synthetic``."""
        out_dir = data_cfg.root or (absolute(workdir) / "synthetic")
        return prepare_synthetic(out_dir, data_cfg.synthetic, runs=data_cfg.runs, seed=data_cfg.split_seed)

    def from_args(self, args) -> Manifest:
        values = {"train_ids": args.train_ids, "test_ids": args.test_ids, "images_per_id": args.images_per_id,
                  "image_size": args.size}
        given = {k: _whole_number(v, _CONFIG_FLAGS[k]) for k, v in values.items() if v is not None}
        if args.aspects is not None:
            given["aspects"] = parse_aspects(args.aspects)
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


__all__ = ["DEFAULT_ASPECTS", "MARKER_NAME", "image_path", "prepare_synthetic", "write_synthetic_dataset"]

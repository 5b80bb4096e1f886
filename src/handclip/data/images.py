"""Image decoding that either gives a correct 8-bit RGB picture or says exactly what is wrong.

``load_rgb`` is the one place HandCLIP turns a file into pixels. It decodes the whole file (so a
truncated JPEG fails here, not halfway through an epoch), applies the EXIF orientation, and maps
every common mode to 8-bit RGB: greyscale, 16-bit greyscale (scaled, not clipped), palette,
CMYK, and images with transparency (composited onto white, the background of the hand datasets).

``scan_images`` checks a whole list of files at once with a thread pool and returns every problem,
so one corrupt file among 11,000 is reported before training starts rather than crashing it.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import DataError, DataWarning
from .manifest import Manifest

# Background for transparent pixels: the hand datasets are photographed on white.
BACKGROUND = (255, 255, 255)
_SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}
# File suffixes taken for images wherever a folder is walked (prepare folder / HD, enrol).
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})
# The smallest image side HandCLIP uses (prepare, scan, train, evaluate, calibrate, enrol check the same).
MIN_IMAGE_SIDE = 16
# The flag every command that reads images takes to leave unusable ones out instead of stopping.
SKIP_BAD_FLAG = "--skip-bad"
# HandCLIP's own files beside identity folders (the synthetic dataset's marker): never reported as ignored.
_OWN_FILES = ".handclip"
# Unusable images named one by one before the rest are only counted.
_NAMED_PROBLEMS = 20


@dataclass(frozen=True)
class ImageProblem:
    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


class _Unusable(Exception):
    """Internal: the reason a file cannot be used (turned into DataError or ImageProblem)."""


def _to_rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(image)
        if mode == "I" and values.size and values.max() <= 255 and values.min() >= 0:
            grey = values.astype(np.uint8)  # an 8-bit image stored in a 32-bit container
        else:
            # 16-bit range -> 8-bit by dividing by 257 (65535 -> 255), never by clipping.
            grey = np.clip(np.rint(values.astype(np.float64) / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if mode == "F":
        values = np.nan_to_num(np.asarray(image, dtype=np.float64))
        scale = 255.0 if values.size and values.max() <= 1.0 else 1.0
        return Image.fromarray(np.clip(np.rint(values * scale), 0, 255).astype(np.uint8), mode="L").convert("RGB")
    if mode == "P" or mode == "PA":
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, BACKGROUND)
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    # L, 1, CMYK, YCbCr, LAB, HSV, RGBX: Pillow's own conversions are correct for these.
    return image.convert("RGB")


class _PixelBudget:
    """At most ``limit`` pixels being decoded at once across the scan's threads (an image above the limit
    alone), so scanning many huge photos in parallel cannot exhaust memory."""

    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0
        self.cond = threading.Condition()

    @contextlib.contextmanager
    def hold(self, pixels: int):
        pixels = min(max(pixels, 1), self.limit)
        with self.cond:
            self.cond.wait_for(lambda: self.used + pixels <= self.limit)
            self.used += pixels
        try:
            yield
        finally:
            with self.cond:
                self.used -= pixels
                self.cond.notify_all()


# ~200 MB of RGB pixels in flight, whatever the number of scan threads.
_SCAN_BUDGET = _PixelBudget(64_000_000)


def _decode(path: str, draft_size: Optional[int] = None,
            verify_only: bool = False) -> tuple[Image.Image | None, tuple[int, int]]:
    """Fully decode ``path``; return (RGB image, original (width, height)). Raises _Unusable.

    ``verify_only`` (the scan): decode every pixel but return no image, within the scan's pixel budget:
    the size comes from the header before any pixel is decoded."""
    try:
        size = os.path.getsize(path)
    except FileNotFoundError:
        raise _Unusable("file not found") from None
    except OSError as exc:
        raise _Unusable(f"cannot read file ({exc.strerror or exc})") from None
    if os.path.isdir(path):
        raise _Unusable("is a directory, not an image")
    if size == 0:
        raise _Unusable("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            # Up to Pillow's hard limit (~179 MP) large photos are fine; only its error means a bomb.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                original_size = image.size
                if draft_size and image.format == "JPEG":
                    # DCT scaling skips most of the inverse transform but still entropy-decodes every
                    # block, so truncated or corrupt data is still detected; it is several times faster.
                    image.draft("RGB", (draft_size, draft_size))
                budget = _SCAN_BUDGET.hold(image.size[0] * image.size[1]) if verify_only else contextlib.nullcontext()
                with budget:
                    image.load()
                    # exif_transpose returns a detached copy, so the file can be closed afterwards.
                    image = _to_rgb(ImageOps.exif_transpose(image))
                return (None if verify_only else image), original_size
    except UnidentifiedImageError:
        raise _Unusable("not a readable image (unknown or invalid format)") from None
    except Image.DecompressionBombError:
        raise _Unusable("image is too large to decode safely (decompression bomb limit)") from None
    except PermissionError as exc:
        raise _Unusable(f"cannot read file ({exc.strerror or exc})") from None
    except MemoryError:
        raise _Unusable("image too large to decode in memory") from None
    except Exception as exc:  # noqa: BLE001 - decoders raise many types for bad data; all mean "corrupt"
        detail = str(exc) or type(exc).__name__
        raise _Unusable(f"truncated or corrupt image ({detail})") from None


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """Decode an image file into an 8-bit RGB ``PIL.Image``; DataError naming the file if unusable."""
    path = os.fspath(path)
    try:
        image, _ = _decode(path)
    except _Unusable as exc:
        raise DataError(f"image {path}: {exc}") from None
    return image


def _check_one(path: str, min_size: int) -> Optional[ImageProblem]:
    try:
        _, (width, height) = _decode(path, draft_size=max(min_size, 1), verify_only=True)
    except _Unusable as exc:
        return ImageProblem(path, str(exc))
    if min(width, height) < min_size:
        return ImageProblem(path, f"too small ({width}x{height} pixels; minimum side is {min_size})")
    return None


def default_workers() -> int:
    # The CPUs this process may run on, counted here rather than by handclip.runtime (which loads torch):
    # scan and prepare answer without torch.
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    # Decoding releases the GIL and file reads wait on the disk, so a few threads per core pay off.
    return max(1, min(32, 4 * cpus))


def scan_images(paths: Iterable[str | os.PathLike], min_size: int = MIN_IMAGE_SIDE,
                workers: Optional[int] = None) -> list[ImageProblem]:
    """Check every image (exists, decodes completely, shorter side >= ``min_size``).

    Returns every problem found, sorted by path; an empty list means all images are usable.
    Each distinct path is checked once.
    """
    unique = sorted({os.fspath(p) for p in paths})
    if not unique:
        return []
    workers = workers or default_workers()
    if workers <= 1 or len(unique) == 1:
        results = [_check_one(p, min_size) for p in unique]
    else:
        with ThreadPoolExecutor(max_workers=min(workers, len(unique))) as pool:
            results = list(pool.map(lambda p: _check_one(p, min_size), unique, chunksize=8))
    return [problem for problem in results if problem is not None]


@dataclass
class ManifestScan:
    """What ``scan_manifest`` found: how many distinct images it checked, the unusable ones, and how long it took."""

    images: int
    problems: list[ImageProblem]
    seconds: float


def scan_manifest(manifest_path: str | os.PathLike, min_size: int = MIN_IMAGE_SIDE, workers: Optional[int] = None,
                  allow_id_overlap: bool = False) -> ManifestScan:
    """Check every image a protocol manifest points at (what ``handclip scan`` runs); refuses a manifest
    whose test identities are also training identities unless ``allow_id_overlap``."""
    manifest = Manifest.read(manifest_path)
    manifest.check_identity_overlap(allow_id_overlap, f"manifest {manifest_path}", "pass --allow-id-overlap")
    paths = manifest.paths()
    start = time.perf_counter()
    problems = scan_images(paths, min_size=min_size, workers=workers)
    return ManifestScan(len(paths), problems, time.perf_counter() - start)


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) from the file header, without decoding the pixels."""
    try:
        with Image.open(Path(path)) as image:
            return image.size
    except (OSError, UnidentifiedImageError) as exc:
        raise DataError(f"image {path}: cannot read its header ({exc})") from None


def thumbnail(path: str | os.PathLike, size: int, letterbox: bool = False) -> Image.Image:
    """The image (EXIF orientation applied, as the model sees it) scaled so its long side is ``size``;
    with ``letterbox``, centred on a light-grey ``size`` x ``size`` square. Small images are enlarged
    too, so 64 px synthetic hands stay legible."""
    image = load_rgb(path)
    scale = size / max(image.width, image.height)
    image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.BICUBIC)
    if not letterbox:
        return image
    canvas = Image.new("RGB", (size, size), (245, 245, 245))
    canvas.paste(image, ((size - image.width) // 2, (size - image.height) // 2))
    return canvas


def is_image_name(name: str) -> bool:
    """A visible file whose suffix is one of IMAGE_SUFFIXES (case-insensitive)."""
    return not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES


@dataclass
class FolderWalk:
    """What ``identity_folders`` passed over: files that are not images by their names (hidden, or another
    suffix) and hidden folders, and the identity folders whose images lie partly in sub-folders."""

    ignored: list[str] = field(default_factory=list)
    nested: dict[str, list[str]] = field(default_factory=dict)  # identity folder -> its sub-folders with images

    def warn(self, root: Path) -> None:
        """One DataWarning line for the ignored files and one per identity folder with sub-folders."""
        if self.ignored:
            shown = ", ".join(self.ignored[:5]) + (f" and {len(self.ignored) - 5} more" if len(self.ignored) > 5 else "")
            warnings.warn(f"ignored {len(self.ignored)} file(s) under {root} that are not images by their names "
                          f"(hidden, or not {'/'.join(sorted(IMAGE_SUFFIXES))}): {shown}", DataWarning, stacklevel=3)
        for name, subfolders in self.nested.items():
            warnings.warn(f"identity folder {root / name} has images in sub-folder(s) {', '.join(subfolders)}; they "
                          f"are counted as {name}'s (move them out if they are another person)", DataWarning,
                          stacklevel=3)


def identity_folders(root: str | os.PathLike, walk: FolderWalk | None = None) -> list[tuple[str, list[str]]]:
    """The identity folders of a folder-per-identity tree (ImageFolder layout), for ``prepare folder``
    and ``enrol`` alike: ``(folder name, image paths)`` for each visible sub-folder of ``root``, sorted by
    name, with its images found recursively (hidden files and folders skipped, symlinked folders
    followed), each path ``root``-joined and the list sorted. ``walk``, when given, collects what was
    passed over and which identities have sub-folders (``FolderWalk``)."""
    root = Path(root)
    walk = walk if walk is not None else FolderWalk()
    out = []
    for entry in sorted(root.iterdir()):
        if not entry.is_dir() or entry.name.startswith("."):
            if not entry.name.startswith(_OWN_FILES):
                walk.ignored.append(str(entry))
            continue
        found = []
        for dirpath, dirnames, filenames in os.walk(entry, followlinks=True):
            walk.ignored.extend(os.path.join(dirpath, d) for d in sorted(dirnames) if d.startswith("."))
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            images = [os.path.join(dirpath, name) for name in filenames if is_image_name(name)]
            walk.ignored.extend(sorted(os.path.join(dirpath, n) for n in filenames if not is_image_name(n)))
            if images and dirpath != str(entry):
                walk.nested.setdefault(entry.name, []).append(os.path.relpath(dirpath, entry) + os.sep)
            found.extend(images)
        out.append((entry.name, sorted(found)))
    return out


def unusable_images(paths: Iterable[str | os.PathLike], skip_bad: bool, what: str = "",
                    min_size: int = MIN_IMAGE_SIDE, workers: Optional[int] = None) -> list[ImageProblem]:
    """Every image of ``paths`` checked (``scan_images``): the unusable ones, when ``skip_bad`` (the caller
    leaves them out and says so with ``warn_left_out``); otherwise any problem is one DataError naming the
    first file, the count and the ``--skip-bad`` flag. ``what`` names the images (``"query/gallery "``)."""
    problems = scan_images(paths, min_size=min_size, workers=workers)
    if problems and not skip_bad:
        first = problems[0]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise DataError(f"{len(problems)} unusable {what}image(s): {first.path}: {first.reason}{more}; fix or "
                        f"remove them, or pass {SKIP_BAD_FLAG} to leave them out")
    return problems


def warn_left_out(problems: Sequence[ImageProblem], where: str, listed_in=None) -> None:
    """One DataWarning line per unusable image left out (the first 20, then their count), so each is
    named once with what was done about it; ``where``: what they were left out of (``"training"``)."""
    for problem in problems[:_NAMED_PROBLEMS]:
        warnings.warn(f"left out {problem.path}: {problem.reason}", DataWarning, stacklevel=2)
    if len(problems) > _NAMED_PROBLEMS:
        listed = f", all listed in {listed_in}" if listed_in else ""
        warnings.warn(f"left out {len(problems) - _NAMED_PROBLEMS} more unusable image(s) of {where}{listed}",
                      DataWarning, stacklevel=2)


def check_images_exist(records: Sequence, source=None) -> None:
    """DataError naming the first missing image (and how many are missing) before any encoding starts."""
    missing = [rec.path for rec in records if not os.path.isfile(rec.path)]
    if missing:
        where = f" (listed in {source})" if source else " (listed in the manifest)"
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise DataError(f"image {missing[0]}{where} does not exist{more}")

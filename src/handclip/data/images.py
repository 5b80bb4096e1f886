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
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import DataError
from .manifest import Manifest

# Background for transparent pixels: the hand datasets are photographed on white.
BACKGROUND = (255, 255, 255)
_SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}
# File suffixes taken for images wherever a folder is walked (prepare folder / HD, enrol).
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})


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
    # Imported here: handclip.runtime loads torch, and the CLI reads the dataset registry (hence this
    # module) to build ``handclip prepare``'s options for every command line.
    from ..runtime import available_cpus

    # Decoding releases the GIL and file reads wait on the disk, so a few threads per core pay off.
    return max(1, min(32, 4 * available_cpus()))


def scan_images(paths: Iterable[str | os.PathLike], min_size: int = 16,
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


def scan_manifest(manifest_path: str | os.PathLike, min_size: int = 16, workers: Optional[int] = None,
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


def identity_folders(root: str | os.PathLike) -> list[tuple[str, list[str]]]:
    """The identity folders of a folder-per-identity tree (ImageFolder layout), for ``prepare folder``
    and ``enrol`` alike: ``(folder name, image paths)`` for each visible sub-folder of ``root``, sorted by
    name, with its images found recursively (hidden files and folders skipped, symlinked folders
    followed), each path ``root``-joined and the list sorted."""
    root = Path(root)
    out = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        found = []
        for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            found.extend(os.path.join(dirpath, name) for name in filenames if is_image_name(name))
        out.append((folder.name, sorted(found)))
    return out


def check_images_exist(records: Sequence, source=None) -> None:
    """DataError naming the first missing image (and how many are missing) before any encoding starts."""
    missing = [rec.path for rec in records if not os.path.isfile(rec.path)]
    if missing:
        where = f" (listed in {source})" if source else " (listed in the manifest)"
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise DataError(f"image {missing[0]}{where} does not exist{more}")

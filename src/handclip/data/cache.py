"""Decode cache: each source image is decoded and resized once, then read back as raw pixels.

11k Hands images are 1600x1200 JPEGs; decoding and resizing them every epoch costs more than a small
model's step. The first access decodes the image, applies the loader's first resize (a ``FirstResize``)
and stores the uint8 pixels; later epochs, later runs and other processes read those pixels back and run
augmentation on them. By default the first resize is the transforms' own resize to the input size (same
function, same interpolation), so the transforms' resize then leaves the image as it is and every pixel is
that of one resize of the original, as in CLIP-ReID; ``data.cache_resolution`` instead shrinks the long
side to a fixed resolution first (aspect kept, never enlarged) and the transforms resize from there.

Layout: one file per image, ``<cache_dir>/<kk>/<key>.px``, where ``key`` hashes the absolute source
path, its size, its mtime (ns), the first resize's ``tag`` and the format version, so a rewritten source
image gets a new entry and the stale one is never read. Each file is a small header (magic, version, key
digest, height, width, CRC32 of the pixels) followed by the raw HxWx3 pixels. Files are written through
``handclip.atomic`` (temporary sibling + rename), so DataLoader workers or separate runs filling the same
cache at once can only ever see complete entries; an entry that is truncated, from another format or
fails its CRC is decoded again and rewritten instead of crashing the run.

Images always go through the same first resize, cache or not (see ``decode_resized``), so switching the
cache on or off changes no pixel.
"""

from __future__ import annotations

import hashlib
import logging
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..atomic import atomic_open
from ..errors import DataError, HandCLIPError
from ..runtime import cache_root
from .images import load_rgb as load_image

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
_MAGIC = b"HCDECODE"
_HEADER = struct.Struct("<8sI32sIII")  # magic, version, key digest, height, width, crc32




def shrink_to(image: Image.Image, max_side: int) -> Image.Image:
    """Downsize so the long side is ``max_side`` (bicubic, aspect kept); smaller images are left as they are."""
    width, height = image.size
    long_side = max(width, height)
    if long_side <= max_side:
        return image
    scale = max_side / long_side
    new_size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return image.resize(new_size, Image.BICUBIC)


@dataclass(frozen=True)
class FirstResize:
    """What a loader does to each decoded image before its transforms (and what the decode cache stores).

    ``size`` (height, width): resize to exactly the input size with ``interpolation``, through the very
    function the transforms' ``Resize`` calls, which then returns the image unchanged. ``max_side``
    (``data.cache_resolution``): shrink the long side to at most ``max_side`` (bicubic, aspect kept).
    """

    size: tuple[int, int] | None = None
    interpolation: str = "bicubic"
    max_side: int | None = None

    def __post_init__(self):
        if (self.size is None) == (self.max_side is None):
            raise DataError("a first resize needs exactly one of an exact size or a maximum side")
        if self.max_side is not None and int(self.max_side) < 16:
            raise DataError(f"decode cache resolution {self.max_side} is too small (minimum 16)")

    @property
    def tag(self) -> str:
        """What the resized pixels depend on (part of cache keys): ``448`` or ``224x224:bilinear``."""
        if self.max_side is not None:
            return str(int(self.max_side))
        return f"{self.size[0]}x{self.size[1]}:{self.interpolation}"

    def apply(self, image: Image.Image) -> Image.Image:
        if self.max_side is not None:
            return shrink_to(image, int(self.max_side))
        from torchvision.transforms.v2 import functional as TF

        from .transforms import INTERPOLATION_MODES

        return TF.resize(image, list(self.size), interpolation=INTERPOLATION_MODES[self.interpolation], antialias=True)


def as_first_resize(resize: "FirstResize | int") -> FirstResize:
    """A ``FirstResize``; a bare int is a maximum long side."""
    return resize if isinstance(resize, FirstResize) else FirstResize(max_side=int(resize))


def decode_resized(path, resize: FirstResize | int) -> np.ndarray:
    """Decode ``path`` to RGB and apply ``resize`` (an int: shrink to that long side); uint8 array [H, W, 3].
    The cache stores exactly this."""
    return np.asarray(as_first_resize(resize).apply(load_image(path)), dtype=np.uint8)


def _source_stat(path: str) -> os.stat_result:
    try:
        return os.stat(path)
    except FileNotFoundError:
        raise DataError(f"image not found: {path}") from None
    except OSError as exc:
        raise DataError(f"cannot read image {path}: {exc.strerror}") from None


class DecodeCache:
    """On-disk store of decoded, resized images; safe to share between processes.

    ``cache_dir`` defaults to ``cache_root() / "decode"``; ``resolution`` is the ``FirstResize`` (an int:
    shrink to that long side). Use ``get(path)`` for the uint8 array or ``image(path)`` for a PIL image
    ready for the transforms.
    """

    def __init__(self, cache_dir: str | os.PathLike | None = None, resolution: FirstResize | int = 448):
        self.resize = as_first_resize(resolution)
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else cache_root() / "decode"
        self.resolution = self.resize.tag
        self._write_failed = False
        self.hits = 0
        self.misses = 0

    def __repr__(self) -> str:
        return f"DecodeCache({str(self.cache_dir)!r}, resolution={self.resolution})"

    def _key(self, path: str, stat: os.stat_result) -> bytes:
        ident = f"v{FORMAT_VERSION}|{path}|{stat.st_size}|{stat.st_mtime_ns}|{self.resolution}"
        return hashlib.sha256(ident.encode("utf-8", "surrogatepass")).digest()

    def entry_path(self, path) -> Path:
        """Where the entry for the current version of ``path`` lives (whether or not it exists yet)."""
        path = os.path.abspath(path)
        key = self._key(path, _source_stat(path)).hex()
        return self.cache_dir / key[:2] / f"{key}.px"

    def _read(self, entry: Path, key: bytes) -> np.ndarray | None:
        try:
            with open(entry, "rb") as handle:
                data = handle.read()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("decode cache entry %s is unreadable (%s); decoding the image again", entry, exc)
            return None
        if len(data) >= _HEADER.size:
            magic, version, digest, height, width, crc = _HEADER.unpack_from(data)
            pixels = memoryview(data)[_HEADER.size:]
            if (magic == _MAGIC and version == FORMAT_VERSION and digest == key
                    and len(pixels) == height * width * 3 and zlib.crc32(pixels) == crc):
                return np.frombuffer(data, dtype=np.uint8, offset=_HEADER.size).reshape(height, width, 3)
        log.warning("decode cache entry %s is corrupt; decoding the image again", entry)
        return None

    def _write(self, entry: Path, key: bytes, pixels: np.ndarray) -> None:
        if self._write_failed:
            return
        pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
        height, width = pixels.shape[:2]
        header = _HEADER.pack(_MAGIC, FORMAT_VERSION, key, height, width, zlib.crc32(pixels.data))
        try:
            with atomic_open(entry, "wb") as handle:
                handle.write(header)
                handle.write(pixels.data)
        except (OSError, HandCLIPError) as exc:
            # A full or read-only cache must not stop training: keep serving decoded images.
            self._write_failed = True
            log.warning("cannot write the decode cache in %s (%s); continuing without storing", self.cache_dir, exc)

    def get(self, path) -> np.ndarray:
        """The image at ``path`` as uint8 [H, W, 3] after the first resize (read-only array)."""
        path = os.path.abspath(path)
        stat = _source_stat(path)
        key = self._key(path, stat)
        hexkey = key.hex()
        entry = self.cache_dir / hexkey[:2] / f"{hexkey}.px"
        pixels = self._read(entry, key)
        if pixels is not None:
            self.hits += 1
            return pixels
        self.misses += 1
        pixels = decode_resized(path, self.resize)
        after = _source_stat(path)
        # Store only if the source did not change while it was being decoded.
        if (after.st_size, after.st_mtime_ns) == (stat.st_size, stat.st_mtime_ns):
            self._write(entry, key, pixels)
        return pixels

    def image(self, path) -> Image.Image:
        return Image.fromarray(self.get(path))

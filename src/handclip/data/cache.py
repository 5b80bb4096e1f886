"""Decode cache: each source image is decoded and downsized once, then read back as raw pixels.

11k Hands images are 1600x1200 JPEGs; decoding and resizing them every epoch costs more than a small
model's step. The first access decodes the image, shrinks it so its long side is ``resolution`` (aspect
kept, never enlarged) and stores the uint8 pixels; later epochs, later runs and other processes read
those pixels back and run augmentation on them.

Layout: one file per image, ``<cache_dir>/<kk>/<key>.px``, where ``key`` hashes the absolute source
path, its size, its mtime (ns), the resolution and the format version, so a rewritten source image gets
a new entry and the stale one is never read. Each file is a small header (magic, version, key digest,
height, width, CRC32 of the pixels) followed by the raw HxWx3 pixels. Files are written through
``handclip.atomic`` (temporary sibling + rename), so DataLoader workers or separate runs filling the same
cache at once can only ever see complete entries; an entry that is truncated, from another format or
fails its CRC is decoded again and rewritten instead of crashing the run.

Images are always brought to this working resolution, cache or not (see ``decode_resized``), so switching
the cache on or off changes no pixel.
"""

from __future__ import annotations

import hashlib
import logging
import os
import struct
import zlib
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


def default_cache_resolution(image_size) -> int:
    """Long side kept in the decode cache: twice the larger input side.

    A 2x margin keeps both sides at or above the input size for aspect ratios up to 2:1 (11k and HD are
    4:3), and leaves room for pad + crop augmentation, while a 1600x1200 JPEG shrinks to 448x336 for
    224x224 input (13x fewer pixels to read and resize every epoch).
    """
    return 2 * max(int(s) for s in image_size)


def shrink_to(image: Image.Image, max_side: int) -> Image.Image:
    """Downsize so the long side is ``max_side`` (bicubic, aspect kept); smaller images are left as they are."""
    width, height = image.size
    long_side = max(width, height)
    if long_side <= max_side:
        return image
    scale = max_side / long_side
    new_size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return image.resize(new_size, Image.BICUBIC)


def decode_resized(path, max_side: int) -> np.ndarray:
    """Decode ``path`` to RGB and shrink it to ``max_side``; uint8 array [H, W, 3]. The cache stores exactly this."""
    return np.asarray(shrink_to(load_image(path), max_side), dtype=np.uint8)


def _source_stat(path: str) -> os.stat_result:
    try:
        return os.stat(path)
    except FileNotFoundError:
        raise DataError(f"image not found: {path}") from None
    except OSError as exc:
        raise DataError(f"cannot read image {path}: {exc.strerror}") from None


class DecodeCache:
    """On-disk store of decoded, downsized images; safe to share between processes.

    ``cache_dir`` defaults to ``cache_root() / "decode"``. Use ``get(path)`` for the uint8 array or
    ``image(path)`` for a PIL image ready for the transforms.
    """

    def __init__(self, cache_dir: str | os.PathLike | None = None, resolution: int = 448):
        if int(resolution) < 16:
            raise DataError(f"decode cache resolution {resolution} is too small (minimum 16)")
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else cache_root() / "decode"
        self.resolution = int(resolution)
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
        """The image at ``path`` as uint8 [H, W, 3], long side at most ``resolution`` (read-only array)."""
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
        pixels = decode_resized(path, self.resolution)
        after = _source_stat(path)
        # Store only if the source did not change while it was being decoded.
        if (after.st_size, after.st_mtime_ns) == (stat.st_size, stat.st_mtime_ns):
            self._write(entry, key, pixels)
        return pixels

    def image(self, path) -> Image.Image:
        return Image.fromarray(self.get(path))

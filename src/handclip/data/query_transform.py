"""Query preparation: the crop, rotation and mirror an examiner applies to a query photo before it is searched.

The transform is applied in one fixed order, always the same (docs/forensic-guide.md states it):

1. orient: the file's EXIF orientation is applied (as for every image HandCLIP reads: ``load_rgb``);
2. crop: the box ``x, y, w, h`` in pixels of that oriented original, (0, 0) its top-left corner;
3. rotate: ``rotate`` degrees clockwise, the canvas grown to hold the whole turned crop and the new
   corners filled white; exact quarter turns are lossless transposes, any other angle bicubic;
4. mirror: left and right swapped.

Everything is deterministic, so the prepared image can be recomputed from the original and the
transform the audit record keeps. Two hashes identify it: ``sha256`` of the PNG file HandCLIP writes
(what ``sha256sum`` checks) and ``pixels_sha256`` of its decoded pixels (mode, size and RGB bytes),
which also holds if another PNG encoder writes the same pixels differently.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import re
from dataclasses import dataclass
from typing import Sequence

from PIL import Image, ImageOps

from ..errors import DataError
from .images import BACKGROUND, MIN_IMAGE_SIDE, load_rgb

ORDER = ("orient", "crop", "rotate", "mirror")
MAX_ANGLE = 360.0
_EXIF_ORIENTATION = 0x0112
_SWAPS_SIDES = {5, 6, 7, 8}  # EXIF orientations that turn the image a quarter
_CROP_TEXT = re.compile(r"\s*(-?\d+)\s*,\s*(-?\d+)\s*,\s*(-?\d+)\s*,\s*(-?\d+)\s*")
# The crop as the web service's schema states it: four whole numbers of 0 or more (``check`` holds it to the image).
CROP_PATTERN = r"^ *[0-9]{1,9} *, *[0-9]{1,9} *, *[0-9]{1,9} *, *[0-9]{1,9} *$"


def _crop_box(crop) -> tuple[int, int, int, int] | None:
    """``"x,y,w,h"`` or four whole numbers as a tuple; DataError naming the value otherwise."""
    if crop is None or crop == "":
        return None
    if isinstance(crop, str):
        match = _CROP_TEXT.fullmatch(crop)
        if not match:
            raise DataError(f"crop {crop[:60]!r} is not x,y,w,h (four whole numbers of pixels, e.g. 10,20,300,400)")
        return tuple(int(v) for v in match.groups())  # type: ignore[return-value]
    values = list(crop) if isinstance(crop, Sequence) else []
    if len(values) != 4 or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise DataError(f"crop {crop!r} is not x,y,w,h (four whole numbers of pixels)")
    return tuple(values)  # type: ignore[return-value]


def _angle(rotate) -> float:
    try:
        angle = float(0.0 if rotate is None or rotate == "" else rotate)
    except (TypeError, ValueError):
        angle = math.nan
    if not math.isfinite(angle) or abs(angle) > MAX_ANGLE:
        raise DataError(f"rotate {rotate!r} is not an angle in degrees from -{MAX_ANGLE:g} to {MAX_ANGLE:g}")
    return angle + 0.0  # -0.0 becomes 0.0: one record for one transform


@dataclass(frozen=True)
class QueryTransform:
    """A crop box (x, y, w, h) in the oriented original, an angle (degrees clockwise), and a mirror."""

    crop: tuple[int, int, int, int] | None = None
    rotate: float = 0.0
    mirror: bool = False

    @classmethod
    def parse(cls, crop=None, rotate=None, mirror=False) -> "QueryTransform":
        """A transform from what a person typed (``"10,20,300,400"``, ``"90"``); DataError naming a bad value.
        Only the values are checked here; ``check`` holds the box to an image."""
        if not isinstance(mirror, bool):
            raise DataError(f"mirror {mirror!r} is not true or false")
        box = _crop_box(crop)
        if box is not None:
            x, y, w, h = box
            if x < 0 or y < 0:
                raise DataError(f"crop {','.join(map(str, box))}: x and y must be 0 or more (pixels from the "
                                f"top-left corner)")
            if w <= 0 or h <= 0:
                raise DataError(f"crop {','.join(map(str, box))}: width and height must be positive")
        return cls(box, _angle(rotate), mirror)

    @classmethod
    def from_record(cls, record: dict | None) -> "QueryTransform":
        """The transform an audit record keeps (``as_record``)."""
        if record is None:
            return cls()
        if not isinstance(record, dict) or tuple(record.get("order") or ()) != ORDER:
            raise DataError(f"transform record {str(record)[:120]!r} is not one HandCLIP wrote")
        return cls.parse(record.get("crop"), record.get("rotate"), record.get("mirror"))

    @property
    def is_identity(self) -> bool:
        return self.crop is None and self.rotate % 360 == 0 and not self.mirror

    def as_record(self) -> dict:
        return {"order": list(ORDER), "crop": list(self.crop) if self.crop else None, "rotate": self.rotate,
                "mirror": self.mirror}

    def describe(self) -> str:
        """The transform in words: ``crop 10,20,300,400 px; rotated 90° clockwise; mirrored left-right``."""
        parts = [f"crop x,y,w,h = {','.join(map(str, self.crop))} px" if self.crop else "no crop"]
        if self.rotate:
            turn = "clockwise" if self.rotate > 0 else "anticlockwise"
            parts.append(f"rotated {abs(self.rotate):g}° {turn}")
        if self.mirror:
            parts.append("mirrored left-right")
        return "; ".join(parts) + f" (applied in this order after the EXIF orientation)"

    def check(self, size: tuple[int, int], name: str) -> None:
        """DataError naming ``name`` and the value when the box leaves the ``size`` (width, height) of the
        oriented original, or the prepared image would be too small to search."""
        width, height = size
        if self.crop is not None:
            x, y, w, h = self.crop
            if x + w > width or y + h > height:
                raise DataError(f"crop {x},{y},{w},{h} leaves image {name} ({width}x{height} pixels after its "
                                f"EXIF orientation): x+w must be at most {width} and y+h at most {height}")
            if min(w, h) < MIN_IMAGE_SIDE:
                raise DataError(f"crop {x},{y},{w},{h} of image {name} is {w}x{h} pixels; both sides must be "
                                f"at least {MIN_IMAGE_SIDE}")

    def apply(self, image: Image.Image) -> Image.Image:
        """The prepared image: ``image`` (already oriented, RGB) cropped, rotated, mirrored, in that order."""
        if self.crop is not None:
            x, y, w, h = self.crop
            image = image.crop((x, y, x + w, y + h))
        clockwise = self.rotate % 360.0
        if clockwise in (90.0, 180.0, 270.0):  # quarter turns move pixels without resampling
            image = image.transpose({90.0: Image.Transpose.ROTATE_270, 180.0: Image.Transpose.ROTATE_180,
                                     270.0: Image.Transpose.ROTATE_90}[clockwise])
        elif clockwise:
            image = image.rotate(-clockwise, resample=Image.Resampling.BICUBIC, expand=True, fillcolor=BACKGROUND)
        return ImageOps.mirror(image) if self.mirror else image


def oriented_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) of an opened image after its EXIF orientation, from the header alone."""
    width, height = image.size
    try:
        orientation = image.getexif().get(_EXIF_ORIENTATION)
    except Exception:  # noqa: BLE001 - a damaged EXIF block is ignored here as exif_transpose ignores it
        orientation = None
    return (height, width) if orientation in _SWAPS_SIDES else (width, height)


def png_bytes(image: Image.Image) -> bytes:
    """The prepared image as the PNG HandCLIP stores: no metadata, fixed compression, so equal pixels
    give equal files with one Pillow build."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=6, optimize=False)
    return buffer.getvalue()


def pixels_sha256(image: Image.Image) -> str:
    """SHA-256 of ``"RGB WIDTHxHEIGHT\\n"`` followed by the raw pixel bytes."""
    rgb = image.convert("RGB")
    return hashlib.sha256(f"RGB {rgb.width}x{rgb.height}\n".encode() + rgb.tobytes()).hexdigest()


@dataclass
class PreparedQuery:
    """A query photo after its transform, with what identifies it."""

    image: Image.Image
    png: bytes
    original_size: tuple[int, int]

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.png).hexdigest()

    @property
    def pixels_sha256(self) -> str:
        return pixels_sha256(self.image)


def prepare_query(path: str | os.PathLike, transform: QueryTransform, name: str | None = None) -> PreparedQuery:
    """Decode ``path`` (EXIF orientation applied), hold ``transform`` to it and apply it. ``name``: how the
    error names the image (default: the path)."""
    original = load_rgb(path)
    transform.check(original.size, name or os.fspath(path))
    prepared = transform.apply(original)
    return PreparedQuery(prepared, png_bytes(prepared), original.size)

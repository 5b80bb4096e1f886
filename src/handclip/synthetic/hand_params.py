"""The parameters of a synthetic hand: who it is (``HandIdentity``, drawn once per identity from a
seeded RNG) and how one photo of it is taken (``Pose``: the per-image nuisance). The renderer
(``render.py``) draws them; the captions (``captions.py``) describe them in words.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from ..errors import DataError

FINGERS = ("index", "middle", "ring", "little")

# Skin tones from dark to light (RGB); an identity's tone is a point on this ramp plus a hue shift.
SKIN_RAMP = np.array(
    [[74, 46, 32], [118, 78, 52], [160, 110, 76], [198, 145, 108], [226, 184, 150], [244, 214, 190]],
    dtype=np.float64,
)
POLISH = np.array(
    [[200, 20, 40], [150, 10, 70], [230, 90, 150], [40, 40, 160], [20, 20, 20], [240, 120, 40], [120, 40, 160]],
    dtype=np.float64,
)


@dataclass(frozen=True)
class HandIdentity:
    """Everything about a hand that stays the same across photos of it."""

    skin: tuple[float, float, float]
    palm_width: float
    palm_height: float
    palm_taper: float  # bottom width / top width
    knuckle_arch: float  # how much higher the middle knuckle sits than the outer ones
    finger_lengths: tuple[float, ...]  # index, middle, ring, little (in palm widths)
    finger_widths: tuple[float, ...]
    finger_base_angles: tuple[float, ...]  # rest direction of each finger (radians from vertical)
    phalanx_split: tuple[tuple[float, float, float], ...]  # proximal/middle/distal fractions per finger
    thumb_length: float
    thumb_width: float
    thumb_angle: float
    thumb_base_y: float
    crease_count: tuple[int, ...]  # knuckle creases at the middle joint of index..little, thumb
    crease_offset: tuple[float, ...]
    palm_lines: tuple[tuple[float, ...], ...]  # quadratic curves (x0,y0,cx,cy,x1,y1) in palm units
    line_darkness: float
    nail_length: float  # fraction of the distal phalanx
    nail_width: float  # fraction of the finger width
    nail_squareness: float  # superellipse exponent: 2 round .. 5 square
    nail_color: tuple[float, float, float]
    polished: bool
    moles: tuple[tuple[float, ...], ...]  # (part, u, v, radius): part -1 palm, 0..3 fingers, 4 thumb
    scar: tuple[float, ...]  # () or (x0, y0, x1, y1) on the palm
    birthmarks: tuple[tuple[float, ...], ...]  # (x, y, rx, ry, angle, tone) pigment patches on the palm


def seeded_rng(*keys: int) -> np.random.Generator:
    return np.random.default_rng([int(k) & 0xFFFFFFFF for k in keys])


# Each part of a hand below draws from the identity's one generator, in the order identity_params calls
# them: changing that order would change every synthetic identity.


def _floats(values) -> tuple[float, ...]:
    return tuple(float(x) for x in values)


def _skin(rng: np.random.Generator) -> np.ndarray:
    """A tone on the skin ramp, with a hue shift."""
    tone = rng.uniform(0, len(SKIN_RAMP) - 1)
    lo = int(min(math.floor(tone), len(SKIN_RAMP) - 2))
    skin = SKIN_RAMP[lo] + (tone - lo) * (SKIN_RAMP[lo + 1] - SKIN_RAMP[lo])
    return np.clip(skin * rng.uniform(0.86, 1.14, 3), 0, 255)


def _fingers(rng: np.random.Generator):
    """(width scale, which the thumb shares; finger lengths; widths; rest angles; phalanx splits)."""
    length_scale = rng.uniform(0.8, 1.2)
    width_scale = rng.uniform(0.8, 1.25)
    lengths = np.array([0.78, 0.88, 0.82, 0.62]) * length_scale * rng.uniform(0.8, 1.2, 4)
    widths = np.array([0.19, 0.2, 0.185, 0.16]) * width_scale * rng.uniform(0.88, 1.12, 4)
    angles = np.array([-0.16, -0.04, 0.07, 0.2]) + rng.normal(0, 0.05, 4)
    splits = []
    for _ in range(4):
        p = np.array([0.45, 0.31, 0.24]) * rng.uniform(0.8, 1.2, 3)
        splits.append(_floats(p / p.sum()))
    return width_scale, lengths, widths, angles, tuple(splits)


def back_of_hand_lines(rng: np.random.Generator) -> tuple[tuple[float, ...], ...]:
    """2-4 quadratic curves (x0, y0, cx, cy, x1, y1) in palm units: tendons and creases on a hand's back."""
    lines = []
    for _ in range(int(rng.integers(2, 5))):
        x0, x1 = rng.uniform(-0.45, 0.45, 2)
        y0, y1 = rng.uniform(-0.4, 0.45, 2)
        cx, cy = rng.uniform(-0.4, 0.4), rng.uniform(-0.4, 0.4)
        lines.append((x0, y0, cx, cy, x1, y1))
    return tuple(_floats(line) for line in lines)


def nail_colour(rng: np.random.Generator, skin: np.ndarray) -> tuple[bool, np.ndarray]:
    """(polished, nail colour): a polish colour, or a pinkish mix with the skin."""
    polished = bool(rng.random() < 0.35)
    if polished:
        return polished, POLISH[int(rng.integers(len(POLISH)))] * rng.uniform(0.85, 1.1, 3)
    return polished, skin + (np.array([255, 215, 210]) - skin) * rng.uniform(0.2, 0.8)


def skin_marks(rng: np.random.Generator):
    """(moles, scar, birthmarks) of one hand's back: marks that differ between a person's two hands."""
    moles = []
    for _ in range(int(rng.choice([1, 1, 2, 2, 3]))):
        part = int(rng.choice([-1, -1, -1, 0, 1, 2, 3, 4]))
        moles.append((part, rng.uniform(-0.35, 0.35), rng.uniform(-0.35, 0.8), rng.uniform(0.035, 0.06)))
    scar = ()
    if rng.random() < 0.3:
        x0, y0 = rng.uniform(-0.35, 0.35, 2)
        ang, ln = rng.uniform(0, math.pi), rng.uniform(0.15, 0.35)
        scar = (x0, y0, x0 + ln * math.cos(ang), y0 + ln * math.sin(ang))
    birthmarks = []
    if rng.random() < 0.4:
        x, y = rng.uniform(-0.3, 0.3), rng.uniform(-0.3, 0.35)
        tone = rng.choice([0.72, 1.22])
        for _ in range(int(rng.integers(1, 4))):  # overlapping blobs make an irregular patch
            birthmarks.append((x + rng.uniform(-0.06, 0.06), y + rng.uniform(-0.06, 0.06),
                               rng.uniform(0.05, 0.12), rng.uniform(0.04, 0.09), rng.uniform(0, math.pi), tone))
    return tuple(_floats(m) for m in moles), _floats(scar), tuple(_floats(b) for b in birthmarks)


@functools.lru_cache(maxsize=4096)
def identity_params(identity: int, seed: int = 0) -> HandIdentity:
    """The fixed hand of ``identity`` (deterministic for (identity, seed))."""
    if identity < 0:
        raise DataError(f"synthetic identity must be >= 0, got {identity}")
    rng = seeded_rng(seed, identity, 0x1D)
    skin = _skin(rng)
    width_scale, finger_lengths, finger_widths, finger_base_angles, splits = _fingers(rng)
    palm_lines = back_of_hand_lines(rng)
    polished, nail_color = nail_colour(rng, skin)
    moles, scar, birthmarks = skin_marks(rng)
    # Keyword arguments are evaluated in order: the draws below come after the parts above.
    return HandIdentity(
        skin=_floats(skin),
        palm_width=float(rng.uniform(0.85, 1.15)),
        palm_height=float(rng.uniform(0.9, 1.2)),
        palm_taper=float(rng.uniform(0.72, 0.95)),
        knuckle_arch=float(rng.uniform(0.0, 0.12)),
        finger_lengths=_floats(finger_lengths),
        finger_widths=_floats(finger_widths),
        finger_base_angles=_floats(finger_base_angles),
        phalanx_split=splits,
        thumb_length=float(rng.uniform(0.6, 0.9)),
        thumb_width=float(rng.uniform(0.2, 0.27) * width_scale),
        thumb_angle=float(rng.uniform(-1.0, -0.55)),
        thumb_base_y=float(rng.uniform(0.05, 0.3)),
        crease_count=tuple(int(x) for x in rng.integers(1, 4, 5)),
        crease_offset=_floats(rng.uniform(-0.25, 0.25, 5)),
        palm_lines=palm_lines,
        line_darkness=float(rng.uniform(0.55, 0.8)),
        nail_length=float(rng.uniform(0.45, 0.85)),
        nail_width=float(rng.uniform(0.55, 0.8)),
        nail_squareness=float(rng.uniform(2.0, 5.0)),
        nail_color=_floats(np.clip(nail_color, 0, 255)),
        polished=polished,
        moles=moles,
        scar=scar,
        birthmarks=birthmarks,
    )


@dataclass(frozen=True)
class Pose:
    """One photo's nuisance: how the hand is posed and photographed."""

    spread: float
    finger_jitter: tuple[float, ...]
    curl: tuple[float, ...]  # foreshortening of each finger, 0 = straight
    thumb_spread: float
    rotation: float
    scale: float
    shift: tuple[float, float]
    brightness: float
    contrast: float
    cast: tuple[float, float, float]
    light_dir: float
    light_strength: float
    blur: float
    noise: float


def pose_params(identity: int, sample: int, seed: int, aspect_code: int = 0) -> Pose:
    """Photo ``sample``'s pose; ``aspect_code`` 0 (right dorsal) keeps the stream the generator always used,
    any other aspect gets its own stream."""
    rng = seeded_rng(seed, identity, 0x9E, sample, *((aspect_code,) if aspect_code else ()))
    return Pose(
        spread=float(rng.uniform(0.7, 1.4)),
        finger_jitter=tuple(float(x) for x in rng.normal(0, 0.04, 4)),
        curl=tuple(float(x) for x in rng.uniform(0, 0.25, 4) * (rng.random() < 0.5)),
        thumb_spread=float(rng.uniform(-0.2, 0.25)),
        rotation=float(rng.uniform(-0.2, 0.2)),
        scale=float(rng.uniform(0.9, 1.08)),
        shift=(float(rng.uniform(-0.06, 0.06)), float(rng.uniform(-0.04, 0.06))),
        brightness=float(rng.uniform(0.85, 1.12)),
        contrast=float(rng.uniform(0.88, 1.1)),
        cast=tuple(float(x) for x in rng.uniform(0.95, 1.05, 3)),
        light_dir=float(rng.uniform(0, 2 * math.pi)),
        light_strength=float(rng.uniform(0.0, 0.15)),
        blur=float(rng.uniform(0, 0.6) if rng.random() < 0.3 else 0.0),
        noise=float(rng.uniform(0, 4)),
    )

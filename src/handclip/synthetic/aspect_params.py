"""A synthetic person's two hands and their palms (docs/method.md, "Aspects of a hand").

The right hand is ``identity_params`` (the hand HandCLIP always drew). The left hand shares the person's
shape up to a small asymmetry (finger and palm proportions, thumb, skin tone, nail shape) and has its
own marks: moles, scar, birthmarks, knuckle creases, back-of-hand lines and nail polish are drawn
afresh for it. Its geometry is drawn mirrored by the renderer, as a left hand is; everything
photographic (light, background, pose) is not.

The palm side (``PalmSide``) holds what a palmar photo shows instead of knuckles and nails: a lighter
palm skin, the principal lines (heart, head, life and sometimes a fate line: one layout per person,
perturbed per hand), minor creases, flexion creases at each finger joint and rare palm moles, all per hand.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import numpy as np

from ..aspects import is_left
from .hand_params import HandIdentity, back_of_hand_lines, identity_params, nail_colour, seeded_rng, skin_marks

# Palm skin is paler and pinker than the back of the hand, the more so the darker the skin.
_PALM_TARGET = np.array([236.0, 196.0, 178.0])
_LEFT, _PALM, _PALM_FAMILY = 0x1E, 0x2A, 0x2B


def _tup(values) -> tuple[float, ...]:
    return tuple(float(v) for v in values)


@functools.lru_cache(maxsize=4096)
def left_hand(identity: int, seed: int = 0) -> HandIdentity:
    """The left hand of ``identity``: the right hand's shape up to a small asymmetry, its own marks."""
    right = identity_params(identity, seed)
    rng = seeded_rng(seed, identity, _LEFT)

    def jitter(values, sd: float) -> tuple[float, ...]:
        values = np.asarray(values, dtype=np.float64)
        return _tup(values * (1 + rng.normal(0, sd, values.shape)))

    skin = np.clip(np.array(right.skin) * rng.uniform(0.97, 1.03, 3), 0, 255)
    splits = []
    for split in right.phalanx_split:
        p = np.asarray(split) * (1 + rng.normal(0, 0.03, 3))
        splits.append(_tup(p / p.sum()))
    shape = dict(
        skin=_tup(skin), palm_width=jitter([right.palm_width], 0.015)[0], palm_height=jitter([right.palm_height], 0.015)[0],
        palm_taper=jitter([right.palm_taper], 0.01)[0], knuckle_arch=right.knuckle_arch + float(rng.normal(0, 0.01)),
        finger_lengths=jitter(right.finger_lengths, 0.02), finger_widths=jitter(right.finger_widths, 0.02),
        finger_base_angles=_tup(np.asarray(right.finger_base_angles) + rng.normal(0, 0.02, 4)),
        phalanx_split=tuple(splits), thumb_length=jitter([right.thumb_length], 0.02)[0],
        thumb_width=jitter([right.thumb_width], 0.02)[0], thumb_angle=right.thumb_angle + float(rng.normal(0, 0.04)),
        thumb_base_y=right.thumb_base_y + float(rng.normal(0, 0.02)),
        nail_length=jitter([right.nail_length], 0.04)[0], nail_width=jitter([right.nail_width], 0.03)[0],
        nail_squareness=float(np.clip(right.nail_squareness + rng.normal(0, 0.2), 2.0, 5.0)),
        line_darkness=float(np.clip(right.line_darkness + rng.normal(0, 0.03), 0.5, 0.85)),
    )
    # Marks: this hand's own. Polish is mostly on both hands or neither (same colour, own wear), not always.
    lines = back_of_hand_lines(rng)
    polished, nails = nail_colour(rng, skin)
    if polished != right.polished and rng.random() < 0.8:
        polished, nails = right.polished, np.array(right.nail_color) * rng.uniform(0.94, 1.06, 3)
    moles, scar, birthmarks = skin_marks(rng)
    return dataclasses.replace(
        right, **shape, palm_lines=tuple(_tup(p) for p in lines), polished=polished,
        nail_color=_tup(np.clip(nails, 0, 255)), moles=tuple(_tup(m) for m in moles), scar=_tup(scar),
        birthmarks=tuple(_tup(b) for b in birthmarks),
        crease_count=tuple(int(x) for x in rng.integers(1, 4, 5)), crease_offset=_tup(rng.uniform(-0.25, 0.25, 5)))


def hand_of(identity: int, seed: int, aspect: str) -> HandIdentity:
    """The hand an aspect shows: the left hand for dorsal_l / palmar_l, else the right hand."""
    return left_hand(identity, seed) if is_left(aspect) else identity_params(identity, seed)


@dataclass(frozen=True)
class PalmSide:
    """What a palmar photo of one hand shows, in the hand's own (right-hand, thumb at -x) palm units."""

    tone: tuple[float, float, float]
    line_darkness: float
    principal: tuple[tuple[float, ...], ...]  # quadratic curves (x0, y0, cx, cy, x1, y1): heart, head, life, fate
    minor: tuple[tuple[float, ...], ...]
    flexion: tuple[tuple[int, int, int], ...]  # crease lines at the base, middle and top joint of index..little, thumb
    flexion_offset: tuple[float, ...]
    moles: tuple[tuple[float, ...], ...]  # (x, y, radius) on the palm


def _principal_layout(rng: np.random.Generator) -> list[np.ndarray]:
    """The person's principal lines (shared by both palms): heart, head, life and, for half of people, fate."""
    heart = [0.5, rng.uniform(-0.3, -0.15), rng.uniform(0.0, 0.2), rng.uniform(-0.28, -0.12),
             rng.uniform(-0.32, -0.05), rng.uniform(-0.46, -0.32)]
    head = [-0.46, rng.uniform(-0.18, -0.06), rng.uniform(-0.1, 0.1), rng.uniform(-0.12, 0.05),
            rng.uniform(0.15, 0.45), rng.uniform(-0.05, 0.3)]
    life = [-0.44, head[1] + rng.uniform(-0.04, 0.04), rng.uniform(-0.12, 0.12), rng.uniform(0.0, 0.2),
            rng.uniform(-0.28, 0.02), 0.5]
    lines = [np.array(heart), np.array(head), np.array(life)]
    if rng.random() < 0.5:
        x = rng.uniform(-0.05, 0.15)
        lines.append(np.array([x, 0.48, x + rng.uniform(-0.08, 0.08), 0.2, x + rng.uniform(-0.1, 0.1),
                               rng.uniform(-0.15, 0.05)]))
    return lines


@functools.lru_cache(maxsize=4096)
def palm_side(identity: int, seed: int, aspect: str) -> PalmSide:
    """The palm of the hand ``aspect`` shows (palmar_r: right palm, palmar_l: left palm)."""
    hand = hand_of(identity, seed, aspect)
    family = _principal_layout(seeded_rng(seed, identity, _PALM_FAMILY))
    rng = seeded_rng(seed, identity, _PALM, int(is_left(aspect)))
    skin = np.array(hand.skin)
    paleness = 0.2 + 0.45 * (1 - skin.mean() / 255)
    tone = np.clip(skin + (_PALM_TARGET - skin) * paleness * rng.uniform(0.95, 1.05), 0, 255)
    principal = [line + rng.normal(0, 0.025, 6) for line in family]
    minor = []
    for _ in range(int(rng.integers(2, 6))):
        x0, y0 = rng.uniform(-0.4, 0.4), rng.uniform(-0.35, 0.4)
        angle, length = rng.uniform(0, np.pi), rng.uniform(0.08, 0.22)
        x1, y1 = x0 + length * np.cos(angle), y0 + length * np.sin(angle)
        minor.append((x0, y0, (x0 + x1) / 2 + rng.normal(0, 0.03), (y0 + y1) / 2 + rng.normal(0, 0.03), x1, y1))
    moles = [(rng.uniform(-0.35, 0.35), rng.uniform(-0.3, 0.35), rng.uniform(0.03, 0.045))
             for _ in range(int(rng.random() < 0.25))]
    return PalmSide(
        tone=_tup(tone), line_darkness=float(rng.uniform(0.6, 0.75)),
        principal=tuple(_tup(p) for p in principal), minor=tuple(_tup(m) for m in minor),
        flexion=tuple(tuple(int(n) for n in rng.integers(1, 3, 3)) for _ in range(5)),
        flexion_offset=_tup(rng.uniform(-0.15, 0.15, 5)), moles=tuple(_tup(m) for m in moles))


__all__ = ["PalmSide", "hand_of", "left_hand", "palm_side"]

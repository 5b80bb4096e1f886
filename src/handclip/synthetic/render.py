"""The renderer of procedural synthetic hands: one photo of one hand, in one aspect, as an RGB image.

Each identity is a fixed set of hand parameters (palm shape, finger lengths/widths/proportions,
skin tone, knuckle creases, back-of-hand lines, nails, moles, scar) drawn from a seeded RNG.
Each image of that identity re-poses and re-photographs the same hand: finger spread and curl,
rotation, scale, translation, lighting, colour cast, background, blur and noise. The nuisance is
strong enough that nearest neighbour on raw pixels fails, while a small CNN learns the identity.

Drawing happens in hand-local units (palm width ~1) at twice the output resolution, then is
downsampled, so images of different sizes show the same hand.

Aspects (docs/method.md, "Aspects of a hand"): hand-local units are those of a right hand seen from the
back (thumb on the image's left). A left hand (``aspect_params.left_hand``) and a palm seen from the front
are drawn with that geometry mirrored, so a right palm and a left back of hand have the thumb on the
image's right, as in a photograph; light, background and pose are never mirrored. A palmar photo shows
the palm side (``aspect_params.palm_side``): paler skin, principal lines, flexion creases at the finger
joints and wrist creases, no knuckle creases and no nails. The right dorsal aspect draws exactly what
the generator always drew.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ..aspects import ASPECTS, is_left, is_palmar, normalise_aspect
from ..errors import DataError
from .aspect_params import PalmSide, hand_of, palm_side
from .hand_params import HandIdentity, Pose, pose_params, seeded_rng

# Bump when the renderer changes, so old folders are re-rendered instead of silently reused.
RENDERER_VERSION = 1
_SUPERSAMPLE = 2


def _background(rng: np.random.Generator, px: int) -> np.ndarray:
    """A plain, gradient or textured background, float RGB [px, px, 3]."""
    base = rng.uniform(30, 235, 3)
    kind = rng.integers(3)
    if kind == 0:
        bg = np.broadcast_to(base, (px, px, 3)).copy()
    elif kind == 1:
        other = rng.uniform(30, 235, 3)
        ang = rng.uniform(0, 2 * math.pi)
        t = np.linspace(-1, 1, px)
        ramp = (math.cos(ang) * t[None, :] + math.sin(ang) * t[:, None]) * 0.5 + 0.5
        bg = base + ramp[..., None] * (other - base)
    else:
        cells = int(rng.integers(4, 12))
        tex = rng.normal(0, rng.uniform(6, 20), (cells, cells, 3))
        tex_img = Image.fromarray(np.clip(tex + 128, 0, 255).astype(np.uint8)).resize((px, px), Image.BICUBIC)
        bg = base + (np.asarray(tex_img, dtype=np.float64) - 128)
    return bg


_UNIT_CIRCLE = {n: (np.cos(np.linspace(0, 2 * math.pi, n, endpoint=False)),
                    np.sin(np.linspace(0, 2 * math.pi, n, endpoint=False))) for n in (16, 20)}


def _ellipse_poly(cx, cy, a, b, angle, power=2.0, n=20):
    """Points of a rotated superellipse (power 2 = ellipse, larger = squarer)."""
    c, s = _UNIT_CIRCLE[n]
    x = a * np.sign(c) * np.abs(c) ** (2 / power)
    y = b * np.sign(s) * np.abs(s) ** (2 / power)
    ca, sa = math.cos(angle), math.sin(angle)
    return np.stack([cx + x * ca - y * sa, cy + x * sa + y * ca], axis=1)


class _Canvas:
    """Draws hand-local shapes onto a supersampled image through one similarity transform."""

    def __init__(self, px: int, pose: Pose, mirror: bool = False):
        self.px = px
        self.mirror = mirror  # draw the hand-local geometry mirrored (x -> -x) before the pose
        self.unit = px / 3.15 * pose.scale  # pixels per palm width
        self.c, self.s = math.cos(pose.rotation), math.sin(pose.rotation)
        self.origin = np.array([px * (0.5 + pose.shift[0]), px * (0.62 + pose.shift[1])])
        self.rgb = Image.new("RGB", (px, px))
        self.mask = Image.new("L", (px, px), 0)
        self.draw = ImageDraw.Draw(self.rgb)
        self.mdraw = ImageDraw.Draw(self.mask)

    def to_px(self, pts) -> list[tuple[float, float]]:
        pts = np.asarray(pts, dtype=np.float64).reshape(-1, 2) * self.unit
        if self.mirror:
            pts = pts * np.array([-1.0, 1.0])
        x = pts[:, 0] * self.c - pts[:, 1] * self.s + self.origin[0]
        y = pts[:, 0] * self.s + pts[:, 1] * self.c + self.origin[1]
        return list(zip(x.tolist(), y.tolist()))

    def map_point(self, p) -> tuple[float, float]:
        x, y = float(p[0]) * self.unit, float(p[1]) * self.unit
        if self.mirror:
            x = -x
        return (x * self.c - y * self.s + self.origin[0], x * self.s + y * self.c + self.origin[1])

    def polygon(self, pts, color, mask=True):
        p = self.to_px(pts)
        self.draw.polygon(p, fill=color)
        if mask:
            self.mdraw.polygon(p, fill=255)

    def disc(self, centre, radius, color, mask=True):
        x, y = self.map_point(centre)
        r = radius * self.unit
        box = (x - r, y - r, x + r, y + r)
        self.draw.ellipse(box, fill=color)
        if mask:
            self.mdraw.ellipse(box, fill=255)

    def capsule(self, p0, p1, r0, r1, color, mask=True):
        (x0, y0), (x1, y1) = p0, p1
        dx, dy = x1 - x0, y1 - y0
        inv = 1.0 / (math.hypot(dx, dy) + 1e-9)
        nx, ny = -dy * inv, dx * inv
        quad = [(x0 + nx * r0, y0 + ny * r0), (x1 + nx * r1, y1 + ny * r1),
                (x1 - nx * r1, y1 - ny * r1), (x0 - nx * r0, y0 - ny * r0)]
        p = [self.map_point(q) for q in quad]
        self.draw.polygon(p, fill=color)
        if mask:
            self.mdraw.polygon(p, fill=255)
        self.disc(p0, r0, color, mask)
        self.disc(p1, r1, color, mask)

    def line(self, pts, color, width_units):
        w = max(1, int(round(width_units * self.unit)))
        self.draw.line(self.to_px(pts), fill=color, width=w, joint="curve")


def _rgb(a) -> tuple[int, int, int]:
    return tuple(int(round(min(255.0, max(0.0, v)))) for v in a)


def _finger_chain(base, angle, length, split, curl, pose_bend):
    """Joint positions of one finger: base, two knuckles, tip (hand-local, y up is negative)."""
    pts = [np.asarray(base, dtype=np.float64)]
    for i, frac in enumerate(split):
        # Curl bends the finger towards the camera: it shows as foreshortening of the outer phalanges.
        seg = length * frac * math.cos(min(1.3, curl * (1 + i)))
        a = angle + pose_bend * i
        pts.append(pts[-1] + seg * np.array([math.sin(a), -math.cos(a)]))
    return pts


def render_hand(identity: int, sample: int, size: int = 64, seed: int = 0, aspect: str = "dorsal_r") -> Image.Image:
    """Photo ``sample`` of synthetic hand ``identity`` in ``aspect``: an RGB ``size`` x ``size`` image.

    Deterministic for (identity, sample, size, seed, aspect); the hand and pose do not depend on ``size``.
    """
    if size < 16:
        raise DataError(f"synthetic image size must be at least 16 pixels, got {size}")
    aspect = normalise_aspect(aspect)
    code = ASPECTS.index(aspect)  # 0 (right dorsal): the random streams the generator always used
    hand = hand_of(identity, seed, aspect)
    pose = pose_params(identity, sample, seed, code)
    rng = seeded_rng(seed, identity, 0xB6, sample, *((code,) if code else ()))  # background and noise
    cv = _Canvas(size * _SUPERSAMPLE, pose, mirror=is_left(aspect) != is_palmar(aspect))
    if is_palmar(aspect):
        _draw_palmar(cv, hand, palm_side(identity, seed, aspect), pose)
    else:
        _draw_hand(cv, hand, pose)
    return _photograph(cv, pose, rng, size)


def _draw_hand(cv: _Canvas, hand: HandIdentity, pose: Pose) -> None:
    """The posed hand on the canvas: silhouette, then pigment, lines, creases, nails and moles on top."""
    skin = np.array(hand.skin)
    # Creases read as darker lines on light skin and as paler ("ashy") lines on dark skin.
    light_skin = skin.mean() > 100
    crease = _rgb(skin * hand.line_darkness if light_skin else skin * (2.1 - hand.line_darkness) + 12)
    palm, wrist_w = _palm(hand)
    digits = _digits(hand, pose)
    _silhouette(cv, hand, palm, wrist_w, digits, _rgb(skin * 0.6), 0.022)
    _silhouette(cv, hand, palm, wrist_w, digits, _rgb(skin), 0.0)
    _draw_palm_marks(cv, hand, skin, crease)
    _draw_creases_and_nails(cv, hand, digits, crease)
    _draw_moles(cv, hand, digits)


def _palm(hand: HandIdentity) -> tuple[np.ndarray, float]:
    """The palm outline, a rounded trapezoid wider at the knuckles than at the wrist, and the wrist's half-width."""
    W, H = hand.palm_width, hand.palm_height
    t = np.linspace(0, 2 * math.pi, 28, endpoint=False)
    py = -np.sin(t) * H / 2
    half_w = W / 2 * (1 - (1 - hand.palm_taper) * (py / H + 0.5))
    px_ = np.sign(np.cos(t)) * np.abs(np.cos(t)) ** 0.5 * half_w
    palm = np.stack([px_, py], axis=1)
    return palm, W * hand.palm_taper * 0.45


def _digits(hand: HandIdentity, pose: Pose) -> list[tuple[list[np.ndarray], float, float]]:
    """(joint chain, radius, angle) of the index, middle, ring and little fingers, then the thumb."""
    W, H = hand.palm_width, hand.palm_height
    # Finger bases along the arched top of the palm.
    fingers = []
    for i in range(4):
        u = -0.36 + 0.24 * i
        x = u * W
        y = -H / 2 + 0.06 + hand.knuckle_arch * (abs(u) / 0.36 - 1)
        angle = hand.finger_base_angles[i] * pose.spread + pose.finger_jitter[i]
        bend = pose.finger_jitter[(i + 1) % 4] * 0.5
        chain = _finger_chain((x, y), angle, hand.finger_lengths[i], hand.phalanx_split[i], pose.curl[i], bend)
        fingers.append((chain, hand.finger_widths[i] / 2, angle))
    tb = np.array([-W / 2 * 0.85, hand.thumb_base_y * H])
    t_angle = hand.thumb_angle - pose.thumb_spread
    thumb_chain = [tb]
    for frac in (0.5, 0.3, 0.2):
        a = t_angle + 0.25 * len(thumb_chain)
        thumb_chain.append(thumb_chain[-1] + hand.thumb_length * frac * np.array([math.sin(a), -math.cos(a)]))
    thumb = (thumb_chain, hand.thumb_width / 2, t_angle + 0.5)
    return fingers + [thumb]


def _silhouette(cv: _Canvas, hand: HandIdentity, palm, wrist_w, digits, color, grow) -> None:
    """Wrist, palm and digits in one colour, grown by ``grow`` (the outline is drawn grown, then the fill)."""
    W, H = hand.palm_width, hand.palm_height
    cv.capsule((0.0, H * 0.3), (0.0, H * 1.6), wrist_w + grow, wrist_w * 1.1 + grow, color)
    centroid = palm.mean(axis=0)
    cv.polygon(centroid + (palm - centroid) * (1 + grow / (W / 2)), color)
    for chain, r, _ in digits:
        for j in range(3):
            taper = (1.0 - 0.08 * j, 1.0 - 0.08 * (j + 1))
            cv.capsule(chain[j], chain[j + 1], r * taper[0] + grow, r * taper[1] + grow, color)


def _draw_palm_marks(cv: _Canvas, hand: HandIdentity, skin: np.ndarray, crease) -> None:
    """Birthmarks, back-of-hand lines (tendons/creases) and a scar, fixed in palm coordinates."""
    W, H = hand.palm_width, hand.palm_height
    for x, y, rx, ry, angle, tone in hand.birthmarks:
        cv.polygon(_ellipse_poly(x * W, y * H, rx, ry, angle), _rgb(skin * tone + (8 if tone > 1 else 0)), mask=False)
    for curve in hand.palm_lines:
        _quadratic(cv, curve, W, H, crease, 0.018)
    if hand.scar:
        x0, y0, x1, y1 = hand.scar
        cv.line([(x0 * W, y0 * H), (x1 * W, y1 * H)], _rgb(skin * 1.12 + 10), 0.03)


def _quadratic(cv: _Canvas, curve, W: float, H: float, color, width: float) -> None:
    """A quadratic curve (x0, y0, cx, cy, x1, y1) given in palm units, drawn as a line of 8 points."""
    x0, y0, cx_, cy_, x1, y1 = curve
    s = np.linspace(0, 1, 8)[:, None]
    pts = (1 - s) ** 2 * [x0 * W, y0 * H] + 2 * s * (1 - s) * [cx_ * W, cy_ * H] + s**2 * [x1 * W, y1 * H]
    cv.line(pts, color, width)


def _draw_palmar(cv: _Canvas, hand: HandIdentity, palm: PalmSide, pose: Pose) -> None:
    """The posed hand seen from the palm: silhouette in palm skin, then lines, flexion and wrist creases, moles."""
    skin, tone = np.array(hand.skin), np.array(palm.tone)
    crease, faint = _rgb(tone * palm.line_darkness), _rgb(tone * (1 + palm.line_darkness) / 2)
    outline, wrist_w = _palm(hand)
    digits = _digits(hand, pose)
    _silhouette(cv, hand, outline, wrist_w, digits, _rgb(skin * 0.6), 0.022)
    _silhouette(cv, hand, outline, wrist_w, digits, _rgb(tone), 0.0)
    W, H = hand.palm_width, hand.palm_height
    # The thenar eminence (the thumb's pad) catches the light.
    cv.polygon(_ellipse_poly(-0.24 * W, 0.16 * H, 0.22 * W, 0.3 * H, 0.25), _rgb(tone * 1.03 + 2), mask=False)
    for curve in palm.minor:
        _quadratic(cv, curve, W, H, faint, 0.012)
    for curve in palm.principal:
        _quadratic(cv, curve, W, H, crease, 0.024)
    for k in (0, 1):  # wrist creases
        y = H * (0.6 + 0.07 * k)
        cv.line([(-wrist_w * 0.85, y), (0.0, y + 0.02), (wrist_w * 0.85, y)], faint, 0.014)
    for k, (chain, r, _) in enumerate(digits):
        _flexion_creases(cv, chain, r, palm.flexion[k], palm.flexion_offset[k], crease, thumb=k == 4)
    for x, y, radius in palm.moles:
        cv.disc((x * W, y * H), radius, (85, 55, 45), mask=False)


def _flexion_creases(cv: _Canvas, chain, r: float, counts, offset: float, color, thumb: bool) -> None:
    """Straight creases across a digit at its joints (the palm-side counterpart of knuckle creases)."""
    joints = (1, 2) if thumb else (0, 1, 2)
    for j, count in zip(joints, counts):
        d = chain[j + 1] - chain[j]
        seg = np.hypot(*d) + 1e-9
        d = d / seg
        n = np.array([-d[1], d[0]])
        # The base crease lies a little up the finger from where it leaves the palm.
        centre = chain[j] + d * (seg * (0.18 if j == 0 and not thumb else 0.0) + offset * r)
        for c in range(count):
            at = centre + d * (0.22 * r * (c - (count - 1) / 2))
            cv.line([at - n * r * 0.85, at + n * r * 0.85], color, 0.012)


def _draw_creases_and_nails(cv: _Canvas, hand: HandIdentity, digits, crease) -> None:
    """Knuckle creases across the middle joint, nails on the distal phalanx."""
    nail_fill = _rgb(hand.nail_color)
    nail_edge = _rgb(np.array(hand.nail_color) * 0.75)
    for k, (chain, r, _) in enumerate(digits):
        joint = chain[1] if k < 4 else chain[2]
        d = chain[2] - chain[1] if k < 4 else chain[3] - chain[2]
        d = d / (np.hypot(*d) + 1e-9)
        n = np.array([-d[1], d[0]])
        for c in range(hand.crease_count[k]):
            off = (hand.crease_offset[k] + 0.35 * (c - (hand.crease_count[k] - 1) / 2)) * r * 0.6
            centre = joint + d * off
            cv.line([centre - n * r * 0.6, centre + d * r * 0.12, centre + n * r * 0.6], crease, 0.014)
        tip, prev = chain[3], chain[2]
        seg = tip - prev
        seg_len = np.hypot(*seg) + 1e-9
        axis = seg / seg_len
        nail_len = max(hand.nail_length * seg_len, 0.35 * r)
        centre = tip - axis * (nail_len / 2 - 0.25 * r)
        ang = math.atan2(axis[1], axis[0])
        a, b = nail_len / 2, r * hand.nail_width
        cv.polygon(_ellipse_poly(*centre, a + 0.012, b + 0.012, ang, hand.nail_squareness), nail_edge, mask=False)
        cv.polygon(_ellipse_poly(*centre, a, b, ang, hand.nail_squareness), nail_fill, mask=False)


def _draw_moles(cv: _Canvas, hand: HandIdentity, digits) -> None:
    W, H = hand.palm_width, hand.palm_height
    for part, u, v, radius in hand.moles:
        part = int(part)
        if part < 0:
            where = np.array([u * W, v * H * 0.8 - 0.1])
        else:
            chain, r, _ = digits[part]
            where = chain[0] + (chain[2] - chain[0]) * (0.3 + 0.5 * abs(v) / 0.8) + u * r * np.array([1.0, 0.0])
        cv.disc(where, radius, (70, 45, 35), mask=False)


def _photograph(cv: _Canvas, pose: Pose, rng: np.random.Generator, size: int) -> Image.Image:
    """Downsample, light the hand, composite onto the background, then the camera's blur and noise."""
    hand_rgb = np.asarray(cv.rgb.resize((size, size), Image.LANCZOS), dtype=np.float64)
    alpha = np.asarray(cv.mask.resize((size, size), Image.LANCZOS), dtype=np.float64)[..., None] / 255.0
    g = np.linspace(-1, 1, size)
    shade = 1 + pose.light_strength * (math.cos(pose.light_dir) * g[None, :] + math.sin(pose.light_dir) * g[:, None])
    hand_rgb = hand_rgb * shade[..., None]
    img = _background(rng, size) * (1 - alpha) + hand_rgb * alpha
    img = (img - 128) * pose.contrast + 128
    img = img * pose.brightness * np.array(pose.cast)
    out = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")
    if pose.blur > 0:
        out = out.filter(ImageFilter.GaussianBlur(pose.blur * size / 64))
    if pose.noise > 0:
        noisy = np.asarray(out, dtype=np.float64) + rng.normal(0, pose.noise, (size, size, 3))
        out = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB")
    return out


__all__ = ["RENDERER_VERSION", "render_hand"]

"""Plain-word captions of the synthetic hands, for pretraining a tiny CLIP (docs/method.md, "Synthetic hands").

A caption describes what the generator drew: some of the identity's fixed traits (skin tone, finger
length and build, palm shape, nails or nail polish, moles, scar, birthmark) and some of the photo's
nuisance (background colour and kind, tilt, lighting, blur, finger spread), each only sometimes.
Each caption keeps only a random subset of the traits in a random order with varied wording, so, as
with web captions for CLIP, the text carries real but partial identity information: many identities
share a caption, and two captions of one image can differ. Deterministic for (identity, sample, seed, variant).
"""

from __future__ import annotations

import numpy as np

from .hand_params import POLISH, identity_params, pose_params, seeded_rng

# Reference colours for naming a background or a nail polish (RGB).
_COLOURS = {
    "black": (25, 25, 25), "dark grey": (80, 80, 80), "grey": (135, 135, 135), "light grey": (195, 195, 195),
    "white": (235, 235, 235), "red": (200, 40, 40), "orange": (230, 130, 40), "yellow": (220, 210, 60),
    "green": (60, 170, 60), "olive": (120, 130, 50), "teal": (40, 150, 150), "blue": (50, 70, 200),
    "navy": (30, 40, 110), "purple": (130, 50, 170), "pink": (230, 130, 180), "brown": (130, 80, 40),
    "beige": (210, 190, 150), "maroon": (120, 30, 50),
}
_POLISH_NAMES = ("red", "burgundy", "pink", "blue", "black", "orange", "purple")
_PARTS = {-1: "the back of the hand", 0: "the index finger", 1: "the middle finger", 2: "the ring finger",
          3: "the little finger", 4: "the thumb"}
_BASE_LENGTH = np.array([0.78, 0.88, 0.82, 0.62])  # the generator's mean finger lengths and widths
_BASE_WIDTH = np.array([0.19, 0.2, 0.185, 0.16])
_OPENINGS = ("a photo of {hand}", "{hand}", "a close-up of {hand}", "a picture of {hand}", "an image of {hand}")
_HANDS = ("a hand", "a right hand", "the back of a right hand", "a person's hand", "a hand seen from the back")


def _nearest_colour(rgb) -> str:
    rgb = np.asarray(rgb, dtype=np.float64)
    return min(_COLOURS, key=lambda name: float(((np.asarray(_COLOURS[name]) - rgb) ** 2).sum()))


def _skin_words(skin) -> str:
    luma = 0.299 * skin[0] + 0.587 * skin[1] + 0.114 * skin[2]
    for limit, words in ((75, "very dark"), (105, "dark brown"), (135, "brown"), (165, "tan"),
                         (195, "light"), (220, "fair")):
        if luma < limit:
            return words
    return "pale"


def identity_phrases(identity: int, seed: int = 0) -> list[list[str]]:
    """Each fixed trait of ``identity`` as a list of interchangeable wordings (traits in a fixed order)."""
    hand = identity_params(identity, seed)
    skin = _skin_words(hand.skin)
    traits = [[f"{skin} skin", f"a {skin} skin tone", f"{skin} coloured skin"]]
    length = float(np.mean(np.asarray(hand.finger_lengths) / _BASE_LENGTH))
    width = float(np.mean(np.asarray(hand.finger_widths) / _BASE_WIDTH))
    if length > 1.07 or length < 0.93:
        size = "long" if length > 1.07 else "short"
        traits.append([f"{size} fingers", f"{size} fingers" if size == "long" else "stubby fingers"])
    if width > 1.1 or width < 0.92:
        build = "thick" if width > 1.1 else "slender"
        traits.append([f"{build} fingers", "wide fingers" if build == "thick" else "thin fingers"])
    ratio = hand.palm_width / hand.palm_height
    if ratio > 1.0 or ratio < 0.85:
        shape = "broad" if ratio > 1.0 else "narrow"
        traits.append([f"a {shape} palm", f"a {shape} hand"])
    if hand.polished:
        colour = _POLISH_NAMES[int(np.argmin(((POLISH - np.asarray(hand.nail_color)) ** 2).sum(1)))]
        traits.append([f"{colour} nail polish", f"{colour} painted nails", f"nails painted {colour}"])
    else:
        shape = "square" if hand.nail_squareness > 3.5 else "rounded"
        size = "long" if hand.nail_length > 0.65 else "short"
        traits.append([f"{size} {shape} nails", f"{shape} natural nails", f"unpainted {size} nails"])
    for part, *_ in hand.moles:
        where = _PARTS[int(part)]
        traits.append([f"a mole on {where}", f"a small dark mole on {where}", f"a dark spot on {where}"])
    if hand.scar:
        traits.append(["a scar", "a pale scar on the back of the hand", "a thin scar"])
    if hand.birthmarks:
        tone = "dark" if hand.birthmarks[0][5] < 1 else "pale"
        traits.append([f"a {tone} birthmark", f"a {tone} patch of skin", f"a {tone} birthmark on the back"])
    return traits


def nuisance_phrases(identity: int, sample: int, seed: int = 0) -> list[list[str]]:
    """What the photo ``sample`` adds: background, tilt, lighting, blur and pose, as lists of wordings."""
    pose = pose_params(identity, sample, seed)
    bg = seeded_rng(seed, identity, 0xB6, sample)  # the renderer's background stream: its first draws
    base, kind = bg.uniform(30, 235, 3), int(bg.integers(3))
    colour = _nearest_colour(base * pose.brightness)
    style = ("plain", "gradient", "textured")[kind]
    phrases = [[f"on a {colour} background", f"against a {style} {colour} background", f"on {colour}"]]
    if abs(pose.rotation) > 0.1:
        side = "left" if pose.rotation < 0 else "right"
        phrases.append([f"tilted to the {side}", f"slightly rotated {side}"])
    if pose.brightness < 0.92 or pose.brightness > 1.06:
        light = "dim" if pose.brightness < 0.92 else "bright"
        phrases.append([f"in {light} light", f"{light} lighting"])
    if pose.blur > 0.3:
        phrases.append(["slightly blurry", "out of focus"])
    if pose.spread > 1.2 or pose.spread < 0.85:
        phrases.append(["fingers spread wide"] if pose.spread > 1.2 else ["fingers held together"])
    return phrases


def _join(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def caption(identity: int, sample: int, seed: int = 0, variant: int = 0, keep: float = 0.6,
            scene: float = 0.5) -> str:
    """A caption of photo ``sample`` of hand ``identity``; ``variant`` draws another wording of the same photo.

    Each identity trait is kept with probability ``keep`` (at least one always), each nuisance phrase
    with probability ``scene``. A low ``scene`` makes captions mostly about the hand: when every caption
    names the background, the image tower learns the background, which does not tell identities apart.
    """
    rng = seeded_rng(seed, identity, 0xCA, sample, variant)
    traits = identity_phrases(identity, seed)
    kept = [t for t in traits if rng.random() < keep] or [traits[int(rng.integers(len(traits)))]]
    order = rng.permutation(len(kept))
    words = [kept[i][int(rng.integers(len(kept[i])))] for i in order]
    said = [p[int(rng.integers(len(p)))] for p in nuisance_phrases(identity, sample, seed) if rng.random() < scene]
    opening = _OPENINGS[int(rng.integers(len(_OPENINGS)))].format(hand=_HANDS[int(rng.integers(len(_HANDS)))])
    text = f"{opening} with {_join(words)}"
    if said:
        text += ", " + ", ".join(said)
    return text


__all__ = ["caption", "identity_phrases", "nuisance_phrases"]

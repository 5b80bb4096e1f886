"""Tiny dataset trees in the real on-disk layouts, for tests.

``make_11k_tree(root)`` writes ``HandInfo.csv`` (the real columns) and ``Hands/Hand_0000001.jpg``...
``make_hd_tree(root)`` writes ``Original Images/1-501/<id>_<n>.jpg`` and ``Original Images/502-712/...``.
Both return ``root``. Images are small real JPEGs whose colour depends on the image, so decoding
works and no two images are byte-identical.

The default 11k rows put identities on both sides of every aspect's cutoff (including ids equal to
the cutoff, and zero-padded ids that compare wrongly as strings), the real ``'1200000 '`` id with its
trailing space, accessories=1 images of a kept identity, and an identity photographed only with
accessories (which must disappear).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Iterable, Optional

from PIL import Image

HANDINFO_COLUMNS = ["id", "age", "gender", "skinColor", "accessories", "nailPolish", "aspectOfHand",
                    "imageName", "irregularities"]
ASPECT_NAMES = {"dorsal_r": "dorsal right", "dorsal_l": "dorsal left", "palmar_r": "palmar right",
                "palmar_l": "palmar left"}
CUTOFFS = {"dorsal_r": 1050, "dorsal_l": 1037, "palmar_r": 1051, "palmar_l": 1042}


def default_11k_rows() -> list[tuple[str, str, int, int]]:
    """(id text as written in HandInfo.csv, aspect key, number of images, accessories)."""
    rows = []
    for aspect, cutoff in CUTOFFS.items():
        rows += [
            ("0000002", aspect, 4, 0),               # well inside train
            (f"{cutoff - 1:07d}", aspect, 3, 0),      # train
            (f"{cutoff:07d}", aspect, 5, 0),          # id == cutoff: train
            (f"{cutoff + 1:07d}", aspect, 3, 0),      # first test id ('0001051' < '1050' as strings)
            ("1200000 ", aspect, 4, 0),               # the real id with a trailing space: test
            ("0001600", aspect, 2, 0),                # test, the smallest a test id may be
            ("0001045", aspect, 3, 0),                # train for dorsal_r/palmar_r, test for dorsal_l/palmar_l
            ("0000002", aspect, 2, 1),                # accessories: filtered out, id stays
            ("0001700", aspect, 3, 1),                # only ever with accessories: id vanishes
        ]
    return rows


def _write_jpeg(path: Path, index: int, size: tuple[int, int]) -> None:
    colour = ((index * 37) % 256, (index * 91 + 40) % 256, (index * 53 + 80) % 256)
    image = Image.new("RGB", size, colour)
    # A second colour block that varies with the index, so images differ in structure too.
    block = Image.new("RGB", (max(1, size[0] // 3), max(1, size[1] // 3)), (255 - colour[0], colour[2], colour[1]))
    image.paste(block, ((index * 3) % max(1, size[0] - block.size[0]), (index * 5) % max(1, size[1] - block.size[1])))
    image.save(path, "JPEG", quality=85)


def make_11k_tree(root, rows: Optional[Iterable[tuple[str, str, int, int]]] = None,
                  image_size: tuple[int, int] = (24, 18), hands_subdir: bool = True) -> Path:
    """Write an 11k-format tree under ``root``; ``rows`` default to ``default_11k_rows()``.

    Each row (id_text, aspect_key, count, accessories) becomes ``count`` consecutive images
    ``Hand_0000001.jpg``... with that metadata. ``aspect_key`` may also be a raw aspectOfHand string.
    """
    root = Path(root)
    images_dir = root / "Hands" if hands_subdir else root
    images_dir.mkdir(parents=True, exist_ok=True)
    rows = list(default_11k_rows() if rows is None else rows)
    number = 0
    with open(root / "HandInfo.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(HANDINFO_COLUMNS)
        for id_text, aspect, count, accessories in rows:
            for _ in range(count):
                number += 1
                name = f"Hand_{number:07d}.jpg"
                _write_jpeg(images_dir / name, number, image_size)
                writer.writerow([id_text, 20 + number % 30, "male" if number % 2 else "female", "fair", accessories,
                                 0, ASPECT_NAMES.get(aspect, aspect), name, 0])
    return root


DEFAULT_HD_MAIN = {1: 4, 5: 3, 446: 2, 447: 5, 448: 3, 460: 2, 501: 4, 620: 3}
DEFAULT_HD_EXTRA = {502: 3, 503: 1, 712: 4}


def make_hd_tree(root, main: Optional[dict[int, int]] = None, extra: Optional[dict[int, int]] = None,
                 image_size: tuple[int, int] = (20, 20)) -> Path:
    """Write an HD-format tree under ``root``: ``{id: number of images}`` for 1-501 and 502-712."""
    root = Path(root)
    number = 0
    for folder, ids in (("1-501", DEFAULT_HD_MAIN if main is None else main),
                        ("502-712", DEFAULT_HD_EXTRA if extra is None else extra)):
        target = root / "Original Images" / folder
        target.mkdir(parents=True, exist_ok=True)
        for pid, count in ids.items():
            for n in range(1, count + 1):
                number += 1
                _write_jpeg(target / f"{pid}_{n}.jpg", number, image_size)
    return root


def make_folder_tree(root, counts: dict[str, int], image_size: tuple[int, int] = (16, 16)) -> Path:
    """ImageFolder layout: ``root/<name>/<k>.jpg`` with ``counts[name]`` images each."""
    root = Path(root)
    number = 0
    for name, count in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for k in range(count):
            number += 1
            _write_jpeg(root / name / f"{k:03d}.jpg", number, image_size)
    return root


# The traps of a newcomer's own folder (docs/user-guide.md, "Your own folder"): file name -> what prepare does.
NEWCOMER_BAD_FILES = {"empty.jpg": "left out", "notes.jpg": "left out", "dot.png": "left out"}


def make_newcomer_folder(root, ids: int = 12, per_id: int = 6, size: int = 64) -> Path:
    """A folder of hands as a new user brings it: ``root/person_NN/`` with ``per_id`` JPEGs of rendered
    synthetic hands at mixed sizes, and the usual traps: a 0-byte ``empty.jpg``, a text file named
    ``notes.jpg``, a 1-pixel ``dot.png`` (unusable: ``NEWCOMER_BAD_FILES``), a CMYK JPEG (usable), a
    nested folder ``person_00/more/`` with two more images (counted as person_00's) and a ``.DS_Store``
    (hidden, ignored)."""
    from handclip.synthetic.render import render_hand

    root = Path(root)
    for person in range(ids):
        folder = root / f"person_{person:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        for n in range(per_id):
            side = size + 16 * (n % 3)  # mixed sizes, as photos come
            image = render_hand(5000 + person, n, side, seed=1)
            image.resize((side, side + 8 * (n % 2))).save(folder / f"IMG_{n:04d}.jpg", quality=90)
    first = root / "person_00"
    (first / "empty.jpg").write_bytes(b"")
    (first / "notes.jpg").write_text("these are the hands from the second visit\n", encoding="utf-8")
    Image.new("RGB", (1, 1), (200, 160, 140)).save(root / "person_01" / "dot.png")
    render_hand(5002, per_id, size, seed=1).convert("CMYK").save(root / "person_02" / "cmyk.jpg", quality=90)
    (first / "more").mkdir(exist_ok=True)
    for n in range(2):
        render_hand(5000, per_id + 1 + n, size, seed=1).save(first / "more" / f"extra_{n}.jpg", quality=90)
    (root / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (first / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    return root

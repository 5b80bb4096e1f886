"""A torch Dataset over manifest records (anything with ``.path`` and ``.pid``).

Items are ``(image_tensor, label, index)``: the index lets training code map a batch back to its records
(stage 1 caches features by it). Labels are ``label_map[pid]`` (contiguous 0..N-1 class ids for training)
or the manifest pid itself for evaluation; identities are never inferred from folder order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

from PIL import Image
from torch.utils.data import Dataset

from ..errors import DataError
from .cache import DecodeCache, FirstResize, as_first_resize, load_image


@dataclass(frozen=True)
class PathRecord:
    """Stand-in record for a bare image path (evaluation of unlabelled images); pid -1."""

    path: str
    pid: int = -1


def as_records(records_or_paths: Sequence) -> list:
    """Records pass through; strings and path-likes become ``PathRecord``s."""
    out = []
    for item in records_or_paths:
        out.append(item if hasattr(item, "path") else PathRecord(str(item)))
    return out


class ManifestDataset(Dataset):
    """Images of ``records`` through ``transform``.

    ``decode_cache``: a ``DecodeCache`` to read pixels from (filled on first access).
    ``first_resize``: without a cache, apply this ``FirstResize`` (an int: shrink to that long side) to the
    decoded image, exactly as the cache would, so results do not depend on whether the cache is on.
    """

    def __init__(self, records: Sequence, transform: Callable | None, label_map: Mapping[int, int] | None = None,
                 decode_cache: DecodeCache | None = None, first_resize: FirstResize | int | None = None):
        self.records = as_records(records)
        self.transform = transform
        self.label_map = dict(label_map) if label_map is not None else None
        self.decode_cache = decode_cache
        self.first_resize = as_first_resize(first_resize) if first_resize is not None else None
        if self.label_map is not None:
            for rec in self.records:
                if rec.pid not in self.label_map:
                    raise DataError(f"image {rec.path} has pid {rec.pid}, which is not in the training label map")
            self.labels = [int(self.label_map[rec.pid]) for rec in self.records]
        else:
            self.labels = [int(rec.pid) for rec in self.records]

    def __len__(self) -> int:
        return len(self.records)

    def load(self, index: int) -> Image.Image:
        """The RGB image of record ``index`` before the transform."""
        path = self.records[index].path
        if self.decode_cache is not None:
            return self.decode_cache.image(path)
        image = load_image(path)
        return self.first_resize.apply(image) if self.first_resize is not None else image

    def __getitem__(self, index: int):
        image = self.load(index)
        if self.transform is not None:
            image = self.transform(image)
        return image, self.labels[index], index

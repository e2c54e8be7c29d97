"""The `Source` protocol every reader's source follows, and the wrappers over any source.

Wrappers: `Subset` (some examples of a parent; `sliced` applies a split's slice with it),
`ChannelSource` (gray <-> RGB) and `PairSource` (two examples side by side, multi-label).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from vistas.data.splits import is_sliced, split_indices
from vistas.errors import DataError


@runtime_checkable
class Source(Protocol):
    """Random access to labelled images: `len(src)`, `src[i] -> {"image": uint8 [H, W, C],
    "label": int32}` (a multi-hot int32 [num_classes] when `multi_label`).

    `image_shape` is (H, W, C), or None when images vary in size. Sources may also have
    `multi_label` (False when absent, so read it with `getattr(src, "multi_label", False)`),
    `class_names` (a tuple, or None) and `labels` (every label, without decoding images).
    `isinstance(obj, Source)` checks that the members above exist.
    """

    num_classes: int
    image_shape: tuple[int, int, int] | None

    def __len__(self) -> int: ...

    def __getitem__(self, i: int) -> dict: ...


class Subset:
    """The examples `indices` (a range or an index array) of a parent source."""

    def __init__(self, parent, indices: Sequence[int]):
        self.parent = parent
        self.indices = indices
        self.num_classes = parent.num_classes
        self.image_shape = parent.image_shape
        self.class_names = getattr(parent, "class_names", None)
        self.multi_label = getattr(parent, "multi_label", False)

    @property
    def labels(self) -> np.ndarray:
        """int32 [len(self)] (or [len(self), K] multi-hot), without decoding images."""
        return np.asarray(self.parent.labels)[np.asarray(self.indices)]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        return self.parent[int(self.indices[i])]


def sliced(source, split: str):
    """`source` restricted to the slice of `split` ('train[:10%]'); itself when unsliced."""
    if not is_sliced(split):
        return source
    return Subset(source, split_indices(split, len(source)))


def to_channels(image: np.ndarray, channels: int) -> np.ndarray:
    """uint8 [H, W, C] -> [H, W, channels]: gray repeated, alpha dropped, or ITU-R 601-2 luma."""
    c = image.shape[-1]
    if c == channels:
        return image
    if channels == 3 and c == 1:
        return np.repeat(image, 3, axis=-1)
    if channels == 3 and c == 4:
        return image[..., :3]  # drop alpha
    if channels == 1 and c in (3, 4):
        # ITU-R 601-2 luma, as PIL's convert("L").
        luma = image[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        return np.clip(np.rint(luma), 0, 255).astype(np.uint8)[..., None]
    raise DataError(f"cannot convert a {c}-channel image to {channels} channels")


class ChannelSource:
    """A parent source whose images are converted to `channels` (1: gray, 3: RGB)."""

    def __init__(self, parent, channels: int):
        self.parent = parent
        self.channels = channels
        self.num_classes = parent.num_classes
        self.class_names = getattr(parent, "class_names", None)
        self.multi_label = getattr(parent, "multi_label", False)
        shape = parent.image_shape
        self.image_shape = None if shape is None else (*shape[:2], channels)

    @property
    def labels(self) -> np.ndarray:
        return self.parent.labels

    def __len__(self) -> int:
        return len(self.parent)

    def __getitem__(self, i: int) -> dict:
        example = self.parent[i]
        return {"image": to_channels(example["image"], self.channels), "label": example["label"]}


class PairSource:
    """Multi-label pairs: example i shows items i and partner(i) of `parent` side by side,
    vertically centred on a square canvas of twice their width; its label is the multi-hot
    vector of both classes. Partners are a permutation drawn from `seed`."""

    multi_label = True

    def __init__(self, parent, seed: int = 0):
        h, w, c = parent.image_shape
        self.parent = parent
        self.partner = np.random.default_rng(seed).permutation(len(parent))
        self.num_classes = parent.num_classes
        self.class_names = getattr(parent, "class_names", None)
        self.image_shape = (2 * w, 2 * w, c)
        self._top = (2 * w - h) // 2
        single = np.asarray(parent.labels)
        both = np.zeros((len(single), self.num_classes), np.int32)
        both[np.arange(len(single)), single] = 1
        both[np.arange(len(single)), single[self.partner]] = 1
        self.labels = both

    def __len__(self) -> int:
        return len(self.partner)

    def __getitem__(self, i: int) -> dict:
        left, right = self.parent[i]["image"], self.parent[int(self.partner[i])]["image"]
        h, w, c = left.shape
        canvas = np.zeros(self.image_shape, np.uint8)
        canvas[self._top:self._top + h, :w] = left
        canvas[self._top:self._top + h, w:] = right
        return {"image": canvas, "label": self.labels[i]}


__all__ = ["ChannelSource", "PairSource", "Source", "Subset", "sliced", "to_channels"]

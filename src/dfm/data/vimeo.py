"""Vimeo90K (Xue et al., "Video enhancement with task-oriented flow", IJCV 2019) as pairs of consecutive frames.

Both on-disk layouts are read: ``triplet`` (``sequences/00001/0001/im1.png`` .. ``im3.png``, lists
``tri_trainlist.txt`` / ``tri_testlist.txt``) and ``septuplet`` (``im1.png`` .. ``im7.png``, lists
``sep_trainlist.txt`` / ``sep_testlist.txt``). Frames are 8-bit RGB PNGs of any size (the real ones
are 448x256), returned as float32 ``(3, H, W)`` tensors in ``[-1, 1]``. A broken dataset raises
:class:`DatasetError` naming the file or directory at fault, so a bad download is found at once and
not mid-training.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

LAYOUTS = {"triplet": ("tri", 3), "septuplet": ("sep", 7)}  # layout -> (list file prefix, frames per sequence)
SPLITS = ("train", "test")


class DatasetError(Exception):
    """A dataset on disk is missing or malformed; the message names the file or directory at fault."""


def _layout(layout: str) -> tuple[str, int]:
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {tuple(LAYOUTS)}, got {layout!r}")
    return LAYOUTS[layout]


def _list_path(root: Path, split: str, layout: str) -> Path:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return root / f"{_layout(layout)[0]}_{split}list.txt"


def _frame_path(root: Path, seq_id: str, number: int) -> Path:
    return root / "sequences" / seq_id / f"im{number}.png"


def detect_layout(root: str | Path) -> str:
    """``"triplet"`` or ``"septuplet"``, from which list files exist, so callers need only the root."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"Vimeo90K root {root} does not exist or is not a directory")
    found = [layout for layout in LAYOUTS if any(_list_path(root, s, layout).is_file() for s in SPLITS)]
    if len(found) != 1:
        names = ", ".join(_list_path(root, s, layout).name for layout in LAYOUTS for s in SPLITS)
        problem = "both triplet and septuplet list files" if found else "no list file"
        raise DatasetError(f"{problem} in Vimeo90K root {root}: expected the files of one layout among {names}")
    return found[0]


def read_list(root: str | Path, split: str, layout: str) -> list[str]:
    """The sequence ids (``"00001/0001"``) of one split, skipping blank lines and surrounding whitespace."""
    path = _list_path(Path(root), split, layout)
    if not path.is_file():
        raise DatasetError(f"list file {path} does not exist")
    ids = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not ids:
        raise DatasetError(f"list file {path} lists no sequences")
    return ids


def _read_png(path: Path) -> Tensor:
    """The image at ``path`` as float32 ``(3, H, W)`` in ``[-1, 1]``; grey is repeated, alpha dropped."""
    if not path.is_file():
        raise DatasetError(f"frame {path} does not exist")
    try:
        image = iio.imread(path, plugin="pillow", mode="RGB")  # converts grey, palette and RGBA to 8-bit RGB
    except Exception as error:  # corrupt files raise a variety of decoder errors
        raise DatasetError(f"cannot read frame {path}: {error}") from error
    return torch.from_numpy(image).permute(2, 0, 1).float() / 127.5 - 1


def _resize_center_crop(images: Tensor, resolution: int) -> Tensor:
    """Scale ``(N, 3, H, W)`` so the shorter side is ``resolution`` (area when shrinking, to avoid
    aliasing; bilinear when growing), then keep the central ``resolution x resolution`` square."""
    h, w = images.shape[-2:]
    if h <= w:
        size = (resolution, max(resolution, round(w * resolution / h)))
    else:
        size = (max(resolution, round(h * resolution / w)), resolution)
    if min(h, w) > resolution:
        images = F.interpolate(images, size=size, mode="area")
    elif min(h, w) < resolution:
        images = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
    top, left = (size[0] - resolution) // 2, (size[1] - resolution) // 2
    return images[..., top : top + resolution, left : left + resolution]


def load_frame(path: str | Path, resolution: int | None = None) -> Tensor:
    """One frame as float32 ``(3, H, W)`` in ``[-1, 1]``, or ``(3, resolution, resolution)`` if given."""
    image = _read_png(Path(path))
    return image if resolution is None else _resize_center_crop(image[None], resolution)[0]


class Vimeo90K(torch.utils.data.Dataset):
    """Pairs of consecutive frames: item ``k`` is frame ``i`` (context) and ``i + 1`` (target) of one sequence.

    A triplet sequence gives 2 pairs and a septuplet 6, in a fixed order (sequence-major), so the
    index space is deterministic. Construction checks only what is cheap (root, list file, sequence
    directories); a missing or corrupt frame is reported when it is loaded.
    """

    def __init__(self, root: str | Path, split: str = "train", resolution: int | None = None):
        if resolution is not None and resolution < 1:
            raise ValueError(f"resolution must be a positive int or None, got {resolution!r}")
        self.root = Path(root)
        self.layout = detect_layout(self.root)
        self.sequences = read_list(self.root, split, self.layout)
        self.resolution = resolution
        self.frames_per_sequence = _layout(self.layout)[1]
        missing = [d for d in (self.root / "sequences" / s for s in self.sequences) if not d.is_dir()]
        if missing:
            listed = ", ".join(map(str, missing[:5])) + (", ..." if len(missing) > 5 else "")
            raise DatasetError(
                f"{len(missing)} sequence directories listed in {_list_path(self.root, split, self.layout)} "
                f"do not exist: {listed}"
            )

    def __len__(self) -> int:
        return len(self.sequences) * (self.frames_per_sequence - 1)

    def __getitem__(self, index: int) -> dict:
        seq_index, offset = divmod(range(len(self))[index], self.frames_per_sequence - 1)
        ctxt, trgt = self._load(seq_index, range(offset + 1, offset + 3))
        return {"ctxt_obs": ctxt, "trgt_obs": trgt, "sequence": self.sequences[seq_index], "frame": offset + 1}

    def frames(self, seq_index: int) -> Tensor:
        """Every frame of one sequence as ``(T, 3, R, R)``, e.g. to render it as a video."""
        return self._load(seq_index, range(1, self.frames_per_sequence + 1))

    def _load(self, seq_index: int, numbers: range) -> Tensor:
        """Frames ``numbers`` (1-based) of one sequence, checked to share a size before any resize hides it."""
        paths = [_frame_path(self.root, self.sequences[seq_index], n) for n in numbers]
        images = [_read_png(p) for p in paths]
        for path, image in zip(paths[1:], images[1:]):
            if image.shape != images[0].shape:
                raise DatasetError(
                    f"frame {path} is {image.shape[2]}x{image.shape[1]} but {paths[0]} is "
                    f"{images[0].shape[2]}x{images[0].shape[1]} (WxH); frames of a sequence must share a size"
                )
        images = torch.stack(images)
        return images if self.resolution is None else _resize_center_crop(images, self.resolution)


def to_pixels(images: Tensor) -> np.ndarray:
    """``(N, 3, H, W)`` floats in ``[-1, 1]`` as ``(N, H, W, 3)`` uint8, rounded: what the generators write."""
    return ((images.detach().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def write_sequence(root: str | Path, seq_id: str, frames: Tensor, layout: str) -> None:
    """Write a ``(T, 3, H, W)`` float tensor in ``[-1, 1]`` as ``ROOT/sequences/<seq_id>/im1.png ...``
    (8-bit, rounded), so generated data can be read exactly like the real dataset."""
    count = _layout(layout)[1]
    if frames.ndim != 4 or frames.shape[:2] != (count, 3):
        raise ValueError(f"a {layout} needs frames of shape ({count}, 3, H, W), got {tuple(frames.shape)}")
    pixels = to_pixels(frames)
    (Path(root) / "sequences" / seq_id).mkdir(parents=True, exist_ok=True)
    for number, image in enumerate(pixels, start=1):
        iio.imwrite(_frame_path(Path(root), seq_id, number), image)


def split_sizes(total: int, test_fraction: float, what: str) -> tuple[int, int]:
    """The sizes of the train and test splits of ``total`` generated ``what`` (sequences, scenes): the
    test split gets the fraction, rounded, and at least one. ValueError unless both get some, since an
    empty list cannot be read (training reads the train split, sampling the test split); generators
    call it before generating anything."""
    n_test = max(1, round(test_fraction * total))
    if n_test >= total:
        raise ValueError(
            f"{total} {what} with a test fraction of {test_fraction} leave {max(total - n_test, 0)} for training and "
            f"{n_test} for testing: both splits need at least one"
        )
    return total - n_test, n_test


def write_lists(root: str | Path, layout: str, train_ids: Sequence[str], test_ids: Sequence[str]) -> None:
    """Write the train and test list files of ``layout`` (one sequence id a line)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for split, ids in zip(SPLITS, (train_ids, test_ids)):
        _list_path(root, split, layout).write_text("".join(f"{seq_id}\n" for seq_id in ids))

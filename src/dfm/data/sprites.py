"""Procedural videos with ambiguous motion: sprites sliding over a static textured background.

Each sprite (a textured disc, square or diamond) moves at a constant speed in one of ``directions``
equally spaced directions (0 = +x, then counter-clockwise in image space: right, up, left, down for 4), drawn
uniformly and independently of everything visible in the first frame, so one frame cannot tell
which way a sprite will go: the true posterior over each sprite's direction is uniform. Sprites
overlap in depth order (occlusions), uncover the background as they move (disocclusions), and may
leave the frame after the first one, which always shows them whole, so a sprite's position does
not give its direction away either.

``SpriteMotion(...).scene(rng)`` returns one scene with its ground truth (for benchmarks);
``write_dataset`` writes many in the Vimeo90K layout (``dfm data motion``).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from dfm.data.vimeo import split_sizes, write_lists, write_sequence

SHAPES = ("disc", "square", "diamond")
PATTERNS = ("blobs", "plaid", "stripes")


@dataclass(frozen=True)
class SpriteMotion:
    """The generator's parameters (all sizes in pixels at ``resolution``)."""

    resolution: int = 32
    frames: int = 3  # 3 = Vimeo90K triplets, 7 = septuplets
    sprites: int = 2
    directions: int = 4
    speed: float = 3.0  # pixels per frame
    min_radius: float = 4.0
    max_radius: float = 7.0
    sprite_pattern: str = "blobs"  # a sprite's texture: "blobs" (smooth random colours), "plaid" or "stripes" (gratings)

    def __post_init__(self) -> None:
        if self.frames not in (3, 7):
            raise ValueError(f"frames must be 3 (triplet) or 7 (septuplet), got {self.frames}")
        if self.sprite_pattern not in PATTERNS:
            raise ValueError(f"sprite_pattern must be one of {PATTERNS}, got {self.sprite_pattern!r}")
        if not 0 < self.min_radius <= self.max_radius < self.resolution / 2:
            raise ValueError(f"need 0 < min_radius <= max_radius < resolution/2, got {self.min_radius}, {self.max_radius}")

    @property
    def velocities(self) -> np.ndarray:
        """``(directions, 2)`` displacement per frame, (dx, dy) in pixels; y points down."""
        angles = 2 * math.pi * np.arange(self.directions) / self.directions
        return self.speed * np.stack([np.cos(angles), -np.sin(angles)], axis=1)

    def scene(self, rng: np.random.Generator) -> "SpriteScene":
        r = self.resolution
        yy, xx = np.mgrid[0:r, 0:r].astype(np.float64)
        background = _texture(rng, r, yy, xx, contrast=0.15)
        sprites = []
        for _ in range(self.sprites):
            radius = rng.uniform(self.min_radius, self.max_radius)
            sprites.append(dict(
                shape=SHAPES[rng.integers(len(SHAPES))],
                radius=radius,
                centre=rng.uniform(radius, r - radius, size=2),  # (x, y): whole in the first frame
                direction=int(rng.integers(self.directions)),
                texture=_sprite_texture(rng, r, yy, xx, rng.uniform(0.1, 0.95, size=3), self.sprite_pattern),
            ))
        frames, masks = [], None
        for k in range(self.frames):
            image, owner = background.copy(), np.full((r, r), -1)
            for i, s in enumerate(sprites):  # later sprites are in front
                shift = k * self.velocities[s["direction"]]
                alpha = _coverage(s["shape"], s["centre"] + shift, s["radius"], xx, yy)
                # the texture moves with the sprite: sample it at the position in the first frame
                texture = _shift(s["texture"], shift)
                image = image * (1 - alpha[..., None]) + texture * alpha[..., None]
                owner[alpha > 0.5] = i
            frames.append(image)
            if k == 0:
                masks = np.stack([owner == i for i in range(len(sprites))])
        flow = np.zeros((2, r, r))
        for i, s in enumerate(sprites):
            flow[:, masks[i]] = self.velocities[s["direction"]][:, None]
        video = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float() * 2 - 1
        return SpriteScene(
            frames=video.clamp(-1, 1),
            masks=torch.from_numpy(masks),
            directions=torch.tensor([s["direction"] for s in sprites]),
            flow=torch.from_numpy(flow).float(),
            meta=[{k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in s.items() if k != "texture"} for s in sprites],
        )


@dataclass
class SpriteScene:
    frames: Tensor  # (T, 3, H, W) in [-1, 1]
    masks: Tensor  # (sprites, H, W) bool: where each sprite is visible (on top) in the first frame
    directions: Tensor  # (sprites,) index into SpriteMotion.velocities
    flow: Tensor  # (2, H, W) true motion from the first frame to the second, (dx, dy) pixels
    meta: list[dict]  # per-sprite parameters, as written to meta.json


def _texture(
    rng: np.random.Generator, r: int, yy: np.ndarray, xx: np.ndarray, contrast: float, base=None,
    gratings: int = 1, periods: tuple[float, float] = (4, 10),
) -> np.ndarray:
    """A smooth colour field plus ``gratings`` sine gratings at right angles to each other (one:
    stripes; two: a plaid, whose motion is visible in every direction, not only across the stripes):
    (r, r, 3) in [0, 1]."""
    coarse = rng.uniform(0, 1, size=(4, 4, 3)) if base is None else base + rng.uniform(-0.05, 0.05, size=(4, 4, 3))
    field = _smooth(coarse, r)
    angle = rng.uniform(0, math.pi)
    pattern = 0.0
    for k in range(gratings):
        a, period = angle + k * math.pi / 2, rng.uniform(*periods)
        pattern = pattern + np.sin(2 * math.pi * (xx * math.cos(a) + yy * math.sin(a)) / period + rng.uniform(0, 2 * math.pi))
    return np.clip(field + contrast * 0.5 * pattern[..., None] / gratings, 0, 1)


def _sprite_texture(rng: np.random.Generator, r: int, yy: np.ndarray, xx: np.ndarray, base: np.ndarray, pattern: str) -> np.ndarray:
    """A sprite's texture around its colour ``base``, (r, r, 3) in [0, 1].

    ``blobs``: +-0.35 on a 10 x 10 grid, interpolated smoothly (features of about 3 px at 32 x 32).
    Every shift shows, and a shifted patch matches best at its true place, so a warp's error falls
    steadily as the flow approaches the true one. ``plaid`` and ``stripes`` add two crossed sine
    gratings or one (periods 6-12 px) to a nearly flat colour. They are periodic, so a 3 px shift
    of a 6 px grating looks like the opposite one, and a warp fitted from small flows stops at
    short, wrong ones: for 3 px true motion, per-pixel flows optimised from 0 by the warp's error
    plus the motion config's smoothness term average 1.35 px over a sprite on plaid, 1.9 px on
    blobs. Motion along stripes is invisible."""
    if pattern == "blobs":
        coarse = np.clip(base + rng.uniform(-0.35, 0.35, size=(10, 10, 3)), 0, 1)
        return np.clip(_smooth(coarse, r), 0, 1)
    return _texture(rng, r, yy, xx, contrast=0.3, base=base, gratings=2 if pattern == "plaid" else 1, periods=(6, 12))


def _smooth(coarse: np.ndarray, r: int) -> np.ndarray:
    """A (g, g, 3) grid interpolated bicubically to (r, r, 3)."""
    return torch.nn.functional.interpolate(
        torch.from_numpy(coarse).permute(2, 0, 1)[None], size=(r, r), mode="bicubic", align_corners=True
    )[0].permute(1, 2, 0).numpy()


def _coverage(shape: str, centre: np.ndarray, radius: float, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    """Anti-aliased coverage of a shape at pixel centres (a one-pixel soft edge)."""
    dx, dy = xx + 0.5 - centre[0], yy + 0.5 - centre[1]
    if shape == "disc":
        d = np.hypot(dx, dy)
    elif shape == "square":
        d = np.maximum(abs(dx), abs(dy))
    else:  # diamond: an L1 ball, scaled to the disc's area
        d = (abs(dx) + abs(dy)) / math.sqrt(2)
    return np.clip(radius - d + 0.5, 0, 1)


def _shift(image: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """Translate an (r, r, 3) texture by a sub-pixel (dx, dy), bilinearly, clamping at the border."""
    r = image.shape[0]
    y, x = np.mgrid[0:r, 0:r].astype(np.float64)
    x, y = np.clip(x - shift[0], 0, r - 1), np.clip(y - shift[1], 0, r - 1)
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    x1, y1 = np.minimum(x0 + 1, r - 1), np.minimum(y0 + 1, r - 1)
    fx, fy = (x - x0)[..., None], (y - y0)[..., None]
    top = image[y0, x0] * (1 - fx) + image[y0, x1] * fx
    bottom = image[y1, x0] * (1 - fx) + image[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


def write_dataset(out: str | Path, generator: SpriteMotion, sequences: int, test_fraction: float = 0.1, seed: int = 0, progress: bool = True) -> Path:
    """Write ``sequences`` scenes under ``out`` in the Vimeo90K layout, with a ``meta.json`` per
    sequence (sprite parameters and directions) and ``generator.json`` (the parameters used)."""
    out = Path(out)
    n_train, _ = split_sizes(sequences, test_fraction, "sequences")
    layout = "triplet" if generator.frames == 3 else "septuplet"
    rng = np.random.default_rng(seed)
    ids = [f"{i // 1000 + 1:05d}/{i % 1000 + 1:04d}" for i in range(sequences)]
    for seq_id in tqdm(ids, desc="scenes", disable=not progress):
        scene = generator.scene(rng)
        write_sequence(out, seq_id, scene.frames, layout)
        (out / "sequences" / seq_id / "meta.json").write_text(json.dumps({"sprites": scene.meta}))
    write_lists(out, layout, ids[:n_train], ids[n_train:])
    (out / "generator.json").write_text(json.dumps({**asdict(generator), "seed": seed, "sequences": sequences}, indent=2))
    return out

"""Turning results into pictures and videos: figures to arrays, image files, GIF/MP4."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import imageio.v3 as iio
import matplotlib

matplotlib.use("Agg")
import matplotlib.colors  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402


def figure_to_array(fig: plt.Figure) -> np.ndarray:
    """Render a matplotlib figure to an ``(H, W, 3)`` uint8 array and close it."""
    fig.canvas.draw()
    rgb = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return rgb


def to_chw(image: np.ndarray) -> torch.Tensor:
    """uint8 ``(H, W, 3)`` -> float ``(3, H, W)`` in [0, 1], the TensorBoard/preview format."""
    return torch.from_numpy(image).permute(2, 0, 1).float() / 255


def save_image(image: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, image)
    return path


def save_video(frames: Sequence[np.ndarray], path: Path, fps: int = 12) -> Path:
    """Write frames as .gif or .mp4 (by extension); MP4 uses imageio-ffmpeg's bundled ffmpeg."""
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = np.stack(frames)
    if path.suffix == ".gif":
        iio.imwrite(path, frames, duration=1000 / fps, loop=0)
    else:
        # H.264 players want sizes divisible by 16: pad with white rather than resample
        h, w = frames.shape[1:3]
        pad = ((0, 0), (0, -h % 16), (0, -w % 16), (0, 0))
        # named, so that without imageio-ffmpeg imageio says so instead of trying another writer
        iio.imwrite(path, np.pad(frames, pad, constant_values=255), fps=fps, codec="libx264", plugin="FFMPEG")
    return path


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """A ``(3, H, W)`` image in [-1, 1] (the model's range) -> ``(H, W, 3)`` uint8."""
    return ((image.detach().cpu().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()


def upscaled(image: np.ndarray, min_size: int = 256, cell: int | None = None) -> np.ndarray:
    """Nearest-neighbour upscaling of a small ``(H, W, 3)`` image so that pixels stay visible in viewers:
    its shorter side to at least ``min_size``, or, for a grid of ``cell``-pixel tiles, each tile."""
    factor = max(1, min_size // (cell or min(image.shape[:2])))
    return image.repeat(factor, 0).repeat(factor, 1)


def flow_to_color(flow: torch.Tensor, max_norm: float | None = None) -> torch.Tensor:
    """Colour-wheel picture of a ``(2, H, W)`` flow (dx, dy) as a ``(3, H, W)`` image in [-1, 1]:
    hue is the direction (0 = +x, red), saturation the length relative to ``max_norm`` (white = still)."""
    dx, dy = flow.detach().cpu().float()
    norm = torch.hypot(dx, dy)
    max_norm = float(norm.max()) if max_norm is None else max_norm
    hue = (torch.atan2(-dy, dx) / (2 * np.pi)) % 1.0  # counter-clockwise as seen on screen (y down)
    saturation = (norm / max(max_norm, 1e-8)).clamp(0, 1)
    hsv = torch.stack([hue, saturation, torch.ones_like(hue)], dim=-1).numpy()
    rgb = matplotlib.colors.hsv_to_rgb(hsv)
    return torch.from_numpy(rgb).permute(2, 0, 1).float() * 2 - 1


def depth_to_color(depth: torch.Tensor, opacity: torch.Tensor, near: float, far: float) -> torch.Tensor:
    """A ``(1, H, W)`` depth map (near bright, far dark, through matplotlib's ``turbo``) faded to black
    where ``opacity`` ``(1, H, W)`` is low, as a ``(3, H, W)`` image in [-1, 1]."""
    closeness = (1 - (depth[0] - near) / (far - near)).clamp(0, 1).cpu().numpy()
    rgb = torch.from_numpy(plt.get_cmap("turbo")(closeness)[..., :3]).permute(2, 0, 1).float()
    return (rgb * opacity.cpu().clamp(0, 1)) * 2 - 1


def write_ply(path: Path, points: torch.Tensor, colours: torch.Tensor) -> Path:
    """An ASCII PLY point cloud: ``points`` ``(P, 3)`` with ``colours`` ``(P, 3)`` in [0, 1]."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = (colours.clamp(0, 1) * 255).round().to(torch.uint8)
    header = (
        f"ply\nformat ascii 1.0\nelement vertex {len(points)}\n"
        "property float x\nproperty float y\nproperty float z\n"
        "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n"
    )
    body = "".join(f"{x:.5f} {y:.5f} {z:.5f} {r} {g} {b}\n" for (x, y, z), (r, g, b) in zip(points.tolist(), rgb.tolist()))
    path.write_text(header + body)
    return path

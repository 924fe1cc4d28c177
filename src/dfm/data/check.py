"""``dfm data check``: read a whole dataset the way training will, before a week of training does.

:func:`check_source` loads every view of every scene and collects each problem the loader reports
(its message names the file and what is wrong) instead of stopping at the first; :func:`scene_summary`
is one scene as the loader returns it (what ``--json`` prints); :func:`plot_scene` draws one scene's
camera frusta and the point cloud of its depth maps, to see at a glance that the cameras surround
the object and that the conventions agree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from tqdm import tqdm

from dfm.cameras import depth_points
from dfm.data.multiview import MultiViewScene, SceneSource
from dfm.data.vimeo import DatasetError


@dataclass
class Report:
    scenes: int = 0  # scenes that loaded
    views: int = 0  # their views
    problems: list[tuple[str, str]] = field(default_factory=list)  # (scene id, what the loader said)


def check_source(source: SceneSource, progress: bool = True) -> Report:
    """Load every view of every scene of ``source``; a scene that fails is one problem, and the rest go on."""
    report = Report()
    for i in tqdm(range(len(source)), desc="scenes", disable=not progress):
        scene_id = source.scene_id(i)
        try:
            scene = source.load(i)
        except DatasetError as error:
            report.problems.append((scene_id, str(error)))
            continue
        report.scenes += 1
        report.views += len(scene.images)
    return report


def find_scene(source: SceneSource, scene_id: str) -> int:
    ids = [source.scene_id(i) for i in range(len(source))]
    if scene_id not in ids:
        shown = ", ".join(ids[:10]) + (", ..." if len(ids) > 10 else "")
        raise DatasetError(f"no scene {scene_id!r} in {source}; it holds {len(ids)}: {shown}")
    return ids.index(scene_id)


def scene_summary(scene: MultiViewScene) -> dict:
    """A scene as the loader returns it: OpenCV ``c2w``, normalised ``K`` (after crop and resize), bounds, size."""
    return {
        "scene": scene.scene_id, "c2w": scene.c2w.tolist(), "K": scene.K.tolist(), "near": scene.near, "far": scene.far,
        "image_size": list(scene.images.shape[-2:]),
    }


def scene_points(scene: MultiViewScene, per_view: int = 2000) -> tuple[torch.Tensor, torch.Tensor]:
    """World points ``(P, 3)`` and colours ``(P, 3)`` in [0, 1] of the pixels with a depth, from every view."""
    if scene.depths is None:
        return torch.zeros(0, 3), torch.zeros(0, 3)
    points = depth_points(scene.depths[:, 0], scene.c2w, scene.K)  # (V, h w, 3)
    z = scene.depths.flatten(1)  # (V, h w)
    colours = ((scene.images.flatten(2).transpose(1, 2) + 1) / 2).clamp(0, 1)
    keep = z > 0
    step = max(1, int(keep.sum()) // (per_view * len(z)))
    return points[keep][::step], colours[keep][::step]


def plot_scene(scene: MultiViewScene, path: Path) -> Path:
    """Camera frusta (the image plane at ``near``-ish scale, the up edge marked) and the depth point cloud, in 3-D."""
    fig = plt.figure(figsize=(6, 6))
    ax = fig.add_subplot(projection="3d")
    points, colours = scene_points(scene)
    if len(points):
        ax.scatter(*points.T.numpy(), c=colours.numpy(), s=1, depthshade=False)
    centres = scene.c2w[:, :3, 3]
    size = 0.15 * float((centres - centres.mean(0)).norm(dim=-1).mean().clamp(min=1e-3))
    corners_uv = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])  # normalised image corners
    for c2w, K in zip(scene.c2w, scene.K):
        x = (corners_uv[:, 0] - K[0, 2]) / K[0, 0]
        y = (corners_uv[:, 1] - K[1, 2]) / K[1, 1]
        corners = torch.stack([x, y, torch.ones(4)], -1) * size @ c2w[:3, :3].T + c2w[:3, 3]
        o = c2w[:3, 3]
        for a in corners:
            ax.plot(*torch.stack([o, a]).T.numpy(), color="tab:blue", linewidth=0.6)
        loop = torch.cat([corners, corners[:1]])
        ax.plot(*loop.T.numpy(), color="tab:blue", linewidth=0.6)
        ax.plot(*corners[:2].T.numpy(), color="tab:red", linewidth=1.2)  # the top edge (OpenCV: y down)
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.set_zlabel("z")
    ax.set_title(f"scene {scene.scene_id}: {len(scene.c2w)} cameras (top edge red), depth points")
    everything = torch.cat([points, centres]) if len(points) else centres
    middle, radius = everything.mean(0), float((everything - everything.mean(0)).abs().max()) or 1.0
    for setter, m in zip((ax.set_xlim, ax.set_ylim, ax.set_zlim), middle.tolist()):
        setter(m - radius, m + radius)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path

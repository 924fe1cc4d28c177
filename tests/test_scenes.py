"""The 3-D task: training examples, the renderer as a forward model, the denoiser's data flow, a tiny
model that learns, sampling (one-shot and autoregressive) and its outputs, and the CLI end to end."""

from __future__ import annotations

import json
import warnings

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from dfm.cameras import intrinsics_from_fov, orbit
from dfm.data.synth3d import Synth3D, Synth3DSource, write_dataset
from dfm.data.vimeo import DatasetError
from dfm.model import DFM
from dfm.runs import make_task
from dfm.tasks.scenes import orbit_like, point_cloud, render_views, sample_autoregressive, sample_scene
from dfm.tasks.scenes.data import SceneViews
from dfm.tasks.scenes.model import Scene, VolumeRenderer
from dfm.tasks.scenes.views import PatchGeometry, ViewSelection
from test_cli import run_dfm

RES = 16
TINY = {
    "task": "scenes",
    "data": {"resolution": RES, "patch_size": 8, "repeats": 4},
    "model": {
        "features": 16, "latent_dim": 8, "encoder": {"width": 16, "depth": 2},
        "field": {"width": 32, "blocks": 2, "mean_after": 1, "num_frequencies": 4, "features": 4},
        "render": {"coarse_samples": 8, "context_resolution": 8, "context_samples": 6},
    },
    "objective": {"loss_weights": {"lpips": 0.0}},
    "train": {"batch_size": 4, "lr": 1e-3, "warmup_steps": 0, "preview_every": 0, "checkpoint_every": 0, "progress": False},
    "sample": {"steps": 3, "num_samples": 2},
    "sample_inputs": 1, "video_frames": 4, "video_resolution": 16,
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth3d")
    return write_dataset(root, Synth3D(resolution=RES, views=6), scenes=8, test_fraction=0.25, progress=False)


def tiny_task(root, **changes):
    raw = json.loads(json.dumps(TINY))
    raw["data"]["root"] = str(root)
    for key, value in changes.items():
        *path, last = key.split(".")
        node = raw
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
    return make_task(raw)


def examples(root, context_views=1, patch_size=None, repeats=1, seed=0, target_views=None, resolution=RES):
    views = ViewSelection(context_views=context_views, target_views=target_views)
    return SceneViews(Synth3DSource(root, "train", resolution), views, PatchGeometry(resolution, patch_size), repeats, seed)


def used_views(scene, params):
    """Which of the scene's views the cameras ``params["c2w"]`` ``(..., 4, 4)`` are."""
    return [int((scene.c2w == c).all((1, 2)).nonzero()) for c in params["c2w"].reshape(-1, 4, 4)]


def test_examples_use_view_0_as_context_and_crop_the_target_patch(data):
    views = examples(data, context_views=2, patch_size=8, repeats=3, seed=1)
    assert len(views) == 6 * 3
    novel_in_context = 0
    for i in range(len(views)):
        item = views[i]
        scene = views.source.load(i % 6)
        assert torch.equal(item["ctxt_obs"][0], scene.images[0]) and torch.equal(item["ctxt_params"]["c2w"][0], scene.c2w[0])
        used = [*used_views(scene, item["ctxt_params"]), *used_views(scene, item["trgt_params"]), *used_views(scene, item["novel_params"])]
        assert len(set(used[:3])) == 3 and used[3] != used[2]  # distinct context views and target; novel != target
        novel_in_context += used[3] in used[:2]
        top, left = item["trgt_params"]["patch"].tolist()
        assert torch.equal(item["trgt_pixels"], item["trgt_obs"][:, top:top + 8, left:left + 8])
        assert item["novel_obs"].shape == (3, 8, 8)
        assert item["trgt_params"]["near"] == 1.5 and item["novel_params"]["far"] == 5.0
    assert 0 < novel_in_context < len(views)  # the novel view is sometimes a context view, not always
    assert all(torch.equal(a, b) for a, b in zip(views[5].values(), views[5].values()) if isinstance(a, torch.Tensor))


def test_target_views_restrict_the_target_and_never_reach_the_context(data):
    views = examples(data, context_views=2, repeats=4, seed=2, target_views=[2, 3])
    targets = []
    for i in range(len(views)):
        item, scene = views[i], views.source.load(i % 6)
        used = [*used_views(scene, item["ctxt_params"]), *used_views(scene, item["trgt_params"])]
        assert used[0] == 0 and len(set(used)) == 3
        targets.append(used[2])
    assert set(targets) == {2, 3}
    for bad in ([], [0, 2], [6]):
        with pytest.raises(DatasetError, match=r"target_views .*views 0-5"):
            examples(data, target_views=bad)


def test_interval_views_follow_the_frame_order():
    """Video frames: the target min_gap..max_gap frames from the context frame, the novel one between them
    (the context frame included), the extra context frames from the same stretch; reversed at random."""
    selection = ViewSelection(mode="interval", context_views=2, min_gap=2, max_gap=4, reverse=True)
    rng = np.random.default_rng(0)
    directions = set()
    for _ in range(200):
        context, target, novel = selection.draw(10, rng)
        first = context[0]
        assert 2 <= abs(target - first) <= 4 and 0 <= min(first, target) and max(first, target) < 10
        low, high = sorted((first, target))
        assert low <= novel <= high and novel != target
        assert all(low <= c <= high and c != target for c in context) and len(set(context)) == 2
        directions.add(target > first)
    assert directions == {True, False}
    assert selection.needed() == 3
    with pytest.raises(DatasetError, match="has 2 views"):
        selection.check(2, "scene x")
    with pytest.raises(ValueError, match="min_gap"):
        ViewSelection(mode="interval", min_gap=5, max_gap=4)


def test_examples_reject_wrong_sizes_and_too_few_views(data, tmp_path):
    with pytest.raises(ValueError, match=r"patch_size 20 does not fit 16x16"):
        examples(data, patch_size=20)
    with pytest.raises(DatasetError, match="has 6 views"):
        examples(data, context_views=6)
    with pytest.raises(DatasetError, match="does not exist"):
        examples(tmp_path / "nowhere")
    resized = examples(data, resolution=8)[0]  # another resolution: centre crop (none here) and resize
    assert resized["trgt_obs"].shape == (3, 8, 8)


def test_a_patch_renders_exactly_those_pixels_of_the_image():
    """The forward model on a patch equals the whole-image rendering cropped there (a smooth analytic field)."""

    def field(points, directions):
        density = 5.0 * torch.exp(-4 * (points**2).sum(-1, keepdim=True))
        return {"density": density, "rgb": torch.tanh(points)}

    renderer = VolumeRenderer(PatchGeometry(RES, 6), num_coarse=16, num_fine=8)
    c2w = orbit(2, 3.0, 20.0)
    K = intrinsics_from_fov(45.0).expand(2, 3, 3)
    scene = Scene(field, field, torch.full((2,), 1.5), torch.full((2,), 5.0))
    whole = renderer(scene, {"c2w": c2w, "K": K})
    patch = renderer(scene, {"c2w": c2w, "K": K, "patch": torch.tensor([[0, 3], [10, 7]])})
    assert whole.observation.shape == (2, 3, RES, RES) and patch.observation.shape == (2, 3, 6, 6)
    assert whole.provides() == renderer.provides() | {"observation"}  # what it says it gives, no more
    for key in ("observation", "depth", "opacity", "coarse"):
        torch.testing.assert_close(getattr(patch, key)[0], getattr(whole, key)[0, :, 0:6, 3:9])
        torch.testing.assert_close(getattr(patch, key)[1], getattr(whole, key)[1, :, 10:16, 7:13])
    # the sphere-like blob is centred in view: opaque in the middle, background (-1) in the corners
    assert whole.opacity[0, 0, RES // 2, RES // 2] > 0.9 and whole.opacity[0, 0, 0, 0] < 0.2


def test_denoiser_output_depends_on_context_and_noisy_target_and_gradients_reach_every_part(data):
    """With every option on: a coarse network and fine samples, pose conditioning, O_det."""
    task = tiny_task(data, **{"model.field.coarse_network": True, "model.render.fine_samples": 4, "model.encoder.pose_conditioning": True})
    torch.manual_seed(0)
    model = task.build_model()
    batch = torch.utils.data.default_collate([task.train_dataset()[i] for i in range(2)])
    model.p_uncond = 0.0
    losses = model(batch, generator=torch.Generator().manual_seed(0))
    assert {"target", "novel", "coarse", "cond", "smoothness", "distortion", "loss"} == set(losses)
    losses["loss"].backward()
    for name in ("denoiser.encoder.inp.weight", "denoiser.encoder.cond.weight", "denoiser.field.inp.weight",
                 "denoiser.coarse_network.inp.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name

    with torch.no_grad():
        d, t = model.denoiser, torch.full((2,), 500.0)
        args = (batch["ctxt_obs"], batch["ctxt_params"], torch.randn(2, 3, RES, RES), t, batch["trgt_params"])
        cameras = {k: v for k, v in batch["trgt_params"].items() if k != "patch"}
        a = model.forward_model(d(*args).signal, cameras).observation
        b = model.forward_model(d(batch["ctxt_obs"] * 0, *args[1:]).signal, cameras).observation
        c = model.forward_model(d(*args[:2], torch.randn(2, 3, RES, RES), *args[3:]).signal, cameras).observation
        assert a.shape == (2, 3, RES, RES)
        assert not torch.allclose(a, b) and not torch.allclose(a, c)
        o_det = d(*args).extras["context"]  # beside the scene, not in it
        assert o_det["rgb"].shape == (2, 3, 8, 8) and o_det["features"].shape == (2, 4, 8, 8)


def test_terms_follow_what_the_model_produces_and_sampling_builds_none(data):
    """No fine pass: no coarse term; no O_det: no cond term, whatever their weights; a sampling model has
    only the target and novel terms and never reads the LPIPS files (absent here: no warning either)."""
    default = tiny_task(data).build_model()
    assert set(default.regularizers) == {"cond", "smoothness", "distortion"}  # coarse weight 1, but no fine pass
    bare = tiny_task(data, **{"model.render.context_samples": 0, "model.render.fine_samples": 4}).build_model()
    assert set(bare.regularizers) == {"coarse", "smoothness", "distortion"} and bare.denoiser.context is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sampling = tiny_task(data, **{"objective.loss_weights.lpips": 0.2, "lpips.backbone_path": "/nowhere"}).build_model(training=False)
    assert not sampling.regularizers and set(sampling.loss_weights) == {"target", "novel"}
    assert sampling.state_dict().keys() == default.state_dict().keys()


def test_lpips_without_weights_warns_and_is_off(data):
    task = tiny_task(data, **{"objective.loss_weights.lpips": 0.2})
    with pytest.warns(UserWarning, match="LPIPS term is off"):
        model = task.build_model()
    assert "lpips" not in model.regularizers and model.loss_weights.get("lpips", 0.0) == 0.0


def test_lpips_term_with_weight_files(data, tmp_path):
    from dfm.networks.lpips import LPIPS

    torch.manual_seed(0)
    state = LPIPS("vgg").state_dict()
    backbone, linear = tmp_path / "vgg16.pth", tmp_path / "vgg.pth"
    torch.save({k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}, backbone)
    torch.save({k.removeprefix("linear."): v.abs() for k, v in state.items() if k.startswith("linear.")}, linear)
    task = tiny_task(data, **{"objective.loss_weights.lpips": 0.2, "lpips.backbone_path": str(backbone),
                              "lpips.linear_path": str(linear), "data.patch_size": 16})
    model = task.build_model()
    batch = torch.utils.data.default_collate([task.train_dataset()[i] for i in range(2)])
    losses = model(batch, generator=torch.Generator().manual_seed(0))
    assert losses["lpips"] > 0
    plain = tiny_task(data, **{"data.patch_size": 16}).build_model()
    assert model.state_dict().keys() == plain.state_dict().keys()  # LPIPS is fixed: not trained, not in checkpoints
    losses["loss"].backward()


def test_tiny_model_learns_and_samples(data, tmp_path):
    from dfm.runs import train

    task = tiny_task(data, out_dir=str(tmp_path / "run"), **{"train.steps": 60})
    trainer, stats = train(task, progress=False)
    model = trainer.ema_model.eval()
    scene = task.test_scenes(1)[0]
    ctxt, params = task.context_of(scene)

    # the context image is reproduced better than by the untrained model
    with torch.random.fork_rng():
        torch.manual_seed(0)
        untrained = task.build_model().eval()

    def context_error(m):
        sample = sample_scene(m, ctxt, params, task.target_camera(scene), 2, steps=3)
        views = render_views(m, sample, scene.c2w[:1], scene.K[:1], RES)
        return ((views["rgb"][:, 0] - scene.images[0]) ** 2).mean().item(), sample

    trained_error, sample = context_error(model)
    assert trained_error < 0.5 * context_error(untrained)[0]
    assert sample.observation.shape == (2, 3, RES, RES)
    views = render_views(model, sample, scene.c2w, scene.K, 8)
    assert views["rgb"].shape == (2, 6, 3, 8, 8) and views["depth"].shape == views["opacity"].shape == (2, 6, 1, 8, 8)

    auto = sample_autoregressive(model, ctxt, params, {"c2w": scene.c2w[[3, 2]], "K": scene.K[[3, 2]]}, 2, steps=2)
    assert auto.observation.shape == (2, 2, 3, RES, RES)

    written = task.write_samples(model, tmp_path / "samples")
    names = {p.name for p in written}
    assert {"input0.png", "input0.pt", "input0_sample0.gif", "input0_sample1.mp4", "input0_sample1.ply"} <= names
    header = (tmp_path / "samples" / "input0_sample0.ply").read_text().split("end_header\n")
    count = int(header[0].split("element vertex ")[1].split()[0])
    assert len(header[1].splitlines()) == count


def test_the_context_part_runs_once_per_sampling_call_and_changes_nothing(data):
    """Sampling through the split (context part once, per-step part each step) gives exactly the samples
    of calling the whole denoiser at every step, with guidance (fp32, same seed)."""
    torch.manual_seed(0)
    model = tiny_task(data).build_model(training=False).eval()

    class Whole(torch.nn.Module):  # the same denoiser, without its split
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, *args):
            return self.inner(*args)

    whole = DFM(Whole(model.denoiser), model.forward_model, model.schedule)
    task = tiny_task(data)
    scene = task.test_scenes(1)[0]
    calls = []
    model.denoiser.encoder.register_forward_hook(lambda *_: calls.append(1))
    a = sample_scene(model, *task.context_of(scene), task.target_camera(scene), 2, steps=4, guidance=2.0)
    split_calls, calls[:] = len(calls), []
    b = sample_scene(whole, *task.context_of(scene), task.target_camera(scene), 2, steps=4, guidance=2.0)
    assert torch.equal(a.observation, b.observation)
    # 4 DDIM steps x 2 branches: the context encoded 2 times (cond, uncond) instead of 8
    assert split_calls == 2 + 8 and len(calls) == 8 + 8


def test_point_cloud_backprojects_depth_along_the_rays():
    c2w = orbit(1, 3.0, 30.0)
    K = intrinsics_from_fov(45.0)[None]
    views = {"rgb": torch.zeros(1, 1, 3, 4, 4), "depth": torch.full((1, 1, 1, 4, 4), 3.0), "opacity": torch.ones(1, 1, 1, 4, 4)}
    views["opacity"][0, 0, 0, 0, 0] = 0.1  # left out
    points, colours = point_cloud(views, c2w, K, 0)
    assert points.shape == (15, 3) and colours.shape == (15, 3)
    torch.testing.assert_close((points - c2w[0, :3, 3]).norm(dim=-1), torch.full((15,), 3.0))
    torch.testing.assert_close(colours, torch.full((15, 3), 0.5))


def test_orbit_like_starts_at_the_camera():
    c2w = orbit(3, 3.2, 25.0, start_azimuth_deg=40.0)
    path = orbit_like(c2w[1], 6)
    torch.testing.assert_close(path[0], c2w[1], atol=1e-5, rtol=0)
    torch.testing.assert_close(path[3, :3, 3].norm(), torch.tensor(3.2))


def test_cli_trains_and_samples_from_an_image_with_its_camera(data, tmp_path):
    config = tmp_path / "tiny.yaml"
    raw = json.loads(json.dumps(TINY)) | {"out_dir": str(tmp_path / "run")}
    raw["data"]["root"] = str(data)
    raw["train"]["steps"] = 2
    config.write_text(json.dumps(raw))  # JSON is YAML
    proc = run_dfm("train", str(config), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "run" / "samples" / "input0.png").is_file()

    scene_dir = data / "scenes" / (data / "test.txt").read_text().split()[0]
    image, cameras = scene_dir / "images" / "000.png", scene_dir / "cameras.json"
    out = tmp_path / "mine"
    proc = run_dfm("sample", str(tmp_path / "run"), "--image", str(image), "--camera", str(cameras), "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert {"000.png", "000_sample0.gif", "000_sample1.ply"} <= {p.name for p in out.iterdir()}

    big = tmp_path / "big.png"
    iio.imwrite(big, np.zeros((32, 32, 3), np.uint8))
    proc = run_dfm("sample", str(tmp_path / "run"), "--image", str(big), "--camera", str(cameras), cwd=tmp_path)
    assert proc.returncode == 2 and "big.png is 32x32" in proc.stderr and "16x16" in proc.stderr
    proc = run_dfm("sample", str(tmp_path / "run"), "--image", str(image), cwd=tmp_path)
    assert proc.returncode == 2 and "--image and --camera go together" in proc.stderr


def test_bf16_training_and_sampling_follow_fp32(data, tmp_path):
    """Stated tolerances: the mean loss of the last 20 of 60 steps within 5% of fp32's; a bf16 sample of the
    fp32-trained model within 0.05 (mean absolute, images in [-1, 1]) of the fp32 sample of the same seed."""
    from dfm.runs import train

    runs = {}
    for precision in ("fp32", "bf16"):
        task = tiny_task(data, out_dir=str(tmp_path / precision), **{"train.steps": 60, "train.log_every": 20, "train.precision": precision})
        runs[precision] = train(task, progress=False)
    (trainer, fp32), (_, bf16) = runs["fp32"], runs["bf16"]
    assert abs(bf16["loss"] - fp32["loss"]) <= 0.05 * fp32["loss"], (bf16["loss"], fp32["loss"])
    scene = task.test_scenes(1)[0]
    model = trainer.ema_model.eval()
    samples = {p: sample_scene(model, *task.context_of(scene), task.target_camera(scene), 2, steps=3, precision=p) for p in runs}
    difference = (samples["bf16"].observation - samples["fp32"].observation).abs().mean()
    assert samples["bf16"].observation.dtype == torch.float32 and 0 < difference < 0.05, difference
    views = render_views(model, samples["bf16"], scene.c2w[:2], scene.K[:2], 8)  # the sampled scene renders outside autocast
    assert views["rgb"].dtype == torch.float32 and views["rgb"].isfinite().all()

"""The GAN-inversion task: generated patch data, the latent denoiser, sampling and the baseline."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dfm.generators import bundled_weights_path
from dfm.runs import make_task

try:
    bundled_weights_path()
    HAVE_WEIGHTS = True
except Exception:  # noqa: BLE001
    HAVE_WEIGHTS = False
pytestmark = pytest.mark.skipif(not HAVE_WEIGHTS, reason="pip install --no-deps gan-face-generate")

TINY = ["model.size=T", "model.width=32", "model.depth=1", "model.patch_size=4", "resolution=16", "patch_min=2", "patch_max=8"]


@pytest.fixture(scope="module")
def task():
    return make_task({"task": "gan"}, TINY)


def test_examples_depend_only_on_their_index(task):
    data = task.train_dataset()
    batch = data.__getitems__([5, 9, 2])
    assert set(batch) == {"ctxt_obs", "trgt_obs", "novel_obs", "novel_params"}  # no latent reaches training
    assert batch["novel_obs"].shape == (3, 3, 64, 64)  # the generator's own resolution, as a novel view
    torch.testing.assert_close(torch.nn.functional.avg_pool2d(batch["novel_obs"], 4), batch["trgt_obs"])
    single = data[9]
    torch.testing.assert_close(batch["novel_obs"][1], single["novel_obs"])
    torch.testing.assert_close(batch["ctxt_obs"][1], single["ctxt_obs"])
    torch.testing.assert_close(batch["trgt_obs"][1], single["trgt_obs"], atol=1e-5, rtol=0)


def test_context_is_one_visible_square_patch(task):
    ex = task.held_out(16)
    assert ex["ctxt_obs"].shape == (16, 4, 16, 16) and ex["trgt_obs"].shape == (16, 3, 16, 16) and ex["latent"].shape == (16, 100)
    masks = ex["ctxt_obs"][:, 3]
    for m in masks:
        ys, xs = torch.nonzero(m, as_tuple=True)
        h, w = int(ys.max() - ys.min() + 1), int(xs.max() - xs.min() + 1)
        assert h == w and 2 <= h <= 8 and m.sum() == h * w  # a full square of the configured size
    exact = make_task({"task": "gan"}, [*TINY, "patch_noise=0"]).held_out(16)  # the same images, noise-free patches
    torch.testing.assert_close(exact["trgt_obs"], ex["trgt_obs"])
    torch.testing.assert_close(exact["ctxt_obs"][:, :3], ex["trgt_obs"] * masks[:, None])
    # the targets are the generator's images of the true latents, at the observation resolution
    torch.testing.assert_close(task.observe(16)(ex["latent"]), ex["trgt_obs"])
    assert ex["latent"].std() == pytest.approx(0.5, rel=0.15)  # truncation psi = 0.5


def test_invalid_patch_sizes():
    with pytest.raises(ValueError, match="patch_min"):
        make_task({"task": "gan"}, ["patch_min=10", "patch_max=4"])


def test_the_native_view_is_a_novel_term_and_can_be_turned_off(task):
    batch = task.train_dataset().__getitems__([0, 1])
    losses = task.build_model()(batch, torch.Generator().manual_seed(0))
    assert "novel" in losses and losses["novel"] > 0
    plain = make_task({"task": "gan"}, [*TINY, "native_view=false"])
    batch = plain.train_dataset().__getitems__([0, 1])
    assert "novel_obs" not in batch
    assert set(plain.build_model()(batch, torch.Generator().manual_seed(0))) == {"target", "loss"}  # no novel term, said so


def test_the_self_conditioned_denoiser_reads_the_image_of_its_previous_latent(task):
    sc = make_task({"task": "gan"}, [*TINY, "objective.self_condition=0.5"])
    model = sc.build_model()
    assert model.denoiser.dit.patch.in_channels == 10 and task.build_model().denoiser.dit.patch.in_channels == 7
    torch.manual_seed(0)
    for p in model.denoiser.dit.parameters():  # the DiT's zero-initialised output layers would hide the input
        p.data.normal_(0, 0.2)
    ex = sc.held_out(2)
    xt, t = torch.randn_like(ex["trgt_obs"]), torch.full((2,), 500.0)
    a, b = (model.denoiser(ex["ctxt_obs"], None, xt, t, None, previous=p) for p in (torch.zeros_like(xt), ex["trgt_obs"]))
    assert not torch.allclose(a, b)
    assert torch.equal(a, model.denoiser(ex["ctxt_obs"], None, xt, t, None))  # no previous estimate: zeros
    batch = sc.train_dataset().__getitems__(list(range(4)))
    assert torch.isfinite(model(batch, torch.Generator().manual_seed(0))["loss"])
    assert sc.sample_latents(model.eval(), ex["ctxt_obs"], 2, steps=3).shape == (2, 2, 100)


STYLEGAN = [
    "generator.architecture=stylegan2", "generator.random_init=true", "generator.space=w", "generator.options.img_resolution=32",
    "generator.options.channel_base=256", "generator.options.channel_max=16", "generator.options.z_dim=16",
    "generator.options.w_dim=16", "generator.options.num_mapping_layers=2",
]


@pytest.mark.parametrize("space", ["w", "w+"])
def test_stylegan2_trains_and_samples_in_its_latent_spaces(space, tmp_path):
    """The whole path with a randomly initialised StyleGAN2 (no official weights here)."""
    from dfm.runs import train

    task = make_task({"task": "gan"}, [
        *TINY, *STYLEGAN, f"generator.space={space}", f"out_dir={tmp_path / 'run'}", "train.steps=3", "train.batch_size=4",
        "train.progress=false", "train.checkpoint_every=0", "train.preview_every=0",
    ])
    dim = 16 if space == "w" else 16 * task.generator.num_ws
    ex = task.held_out(2)
    assert ex["latent"].shape == (2, dim) and ex["trgt_obs"].shape == (2, 3, 16, 16)
    trainer, stats = train(task, progress=False)
    assert stats["step"] == 3 and np.isfinite(stats["loss"])
    latents = task.sample_latents(trainer.ema_model.eval(), ex["ctxt_obs"], 2, steps=2)
    assert latents.shape == (2, 2, dim)
    u = torch.randn(2, 3, 16)
    assert task.log_posterior(ex["ctxt_obs"])(u).shape == (2, 3)


def test_generator_config_errors():
    with pytest.raises(ValueError, match="generator.space of dcgan64 must be one of"):
        make_task({"task": "gan"}, [*TINY, "generator.space=w"])
    with pytest.raises(ValueError, match="truncates in w"):
        make_task({"task": "gan"}, [*TINY, *STYLEGAN, "generator.space=z"])
    with pytest.raises(Exception, match="needs a weight file"):
        make_task({"task": "gan"}, [*TINY, "generator.architecture=stylegan2", "generator.space=w"])


def test_training_on_one_batch_lowers_the_loss(task):
    torch.manual_seed(0)
    model = task.build_model()
    assert not any("generator" in k for k in model.state_dict())  # the fixed generator is not checkpointed
    batch = task.train_dataset().__getitems__(list(range(16)))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for step in range(60):
        loss = model(batch, torch.Generator().manual_seed(step % 4))
        opt.zero_grad()
        loss["loss"].backward()
        opt.step()
        losses.append(loss["target"].item())
    assert np.mean(losses[-8:]) < 0.7 * np.mean(losses[:4]), losses


def test_sampling_and_inversion_shapes(task, tmp_path):
    model = task.build_model().eval()
    ex = task.held_out(2)
    latents = task.sample_latents(model, ex["ctxt_obs"], 3, steps=2)
    assert latents.shape == (2, 3, 100)
    files = task.write_grids(latents, ex, tmp_path, "samples")
    assert [f.name for f in files] == ["samples.png", "samples_native.png", "samples.pt"]
    import imageio.v3 as iio

    # rows: 2 inputs; columns: patch, truth, 3 samples; 16 px upscaled x4, native 64 px
    assert iio.imread(files[0]).shape == (2 * 64, 5 * 64, 3)
    assert iio.imread(files[1]).shape == (2 * 64, 5 * 64, 3)


def test_optimisation_baseline_fits_the_patch(task):
    cfg_task = make_task({"task": "gan"}, [*TINY, "inversion.steps=150", "patch_min=8"])
    ex = cfg_task.held_out(2)
    z = cfg_task.invert_latents(ex["ctxt_obs"])
    assert z.shape == (2, 1, 100)
    masks = ex["ctxt_obs"][:, 3:]
    with torch.no_grad():
        fitted = cfg_task.observe(16)(z[:, 0])
    err = ((fitted - ex["trgt_obs"]) ** 2 * masks).sum() / (3 * masks.sum())
    prior = ((cfg_task.observe(16)(torch.zeros(2, 100)) - ex["trgt_obs"]) ** 2 * masks).sum() / (3 * masks.sum())
    assert err < 0.3 * prior


def test_the_baseline_keeps_the_restart_of_highest_posterior_density():
    cfg_task = make_task({"task": "gan"}, [*TINY, "inversion.steps=0", "inversion.restarts=4"])
    ctxt = cfg_task.held_out(3)["ctxt_obs"]
    u, log_prob = cfg_task.invert_noise(ctxt, seed=5)
    starts = torch.randn(3, 4, 100, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(u, starts)  # no steps: the prior draws themselves
    torch.testing.assert_close(log_prob, cfg_task.log_posterior(ctxt)(starts))
    best = cfg_task.invert_latents(ctxt, seed=5)[:, 0]
    torch.testing.assert_close(best, 0.5 * starts[torch.arange(3), log_prob.argmax(1)])  # psi = 0.5


def test_log_posterior_is_the_prior_plus_the_gaussian_patch_likelihood(task):
    ex = task.held_out(2)
    u = torch.randn(2, 3, 100, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        images = task.observe(16)(0.5 * u.flatten(0, 1)).view(2, 3, 3, 16, 16)
    patch, mask = ex["ctxt_obs"][:, None, :3], ex["ctxt_obs"][:, None, 3:]
    by_hand = -0.5 * (u**2).sum(-1) - (((images - patch) * mask) ** 2).sum((2, 3, 4)) / (2 * 0.1**2)
    torch.testing.assert_close(task.log_posterior(ex["ctxt_obs"])(u), by_hand)
    # the patch carries N(0, 0.1^2) noise: the visible pixels differ from the image by about that much
    residual = (ex["ctxt_obs"][:, :3] - ex["trgt_obs"]) * ex["ctxt_obs"][:, 3:]
    assert residual.square().sum().div(3 * ex["ctxt_obs"][:, 3].sum()).sqrt().item() == pytest.approx(0.1, rel=0.3)
    with pytest.raises(ValueError, match="patch_noise > 0"):
        make_task({"task": "gan"}, [*TINY, "patch_noise=0"]).log_posterior(ex["ctxt_obs"])

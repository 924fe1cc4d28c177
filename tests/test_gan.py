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
    assert set(batch) == {"ctxt_obs", "trgt_obs"}  # no latent reaches training
    single = data[9]
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
    torch.testing.assert_close(ex["ctxt_obs"][:, :3], ex["trgt_obs"] * masks[:, None])
    # the targets are the generator's images of the true latents, at the observation resolution
    torch.testing.assert_close(task.observe(16)(ex["latent"]), ex["trgt_obs"])
    assert ex["latent"].std() == pytest.approx(0.5, rel=0.15)  # truncation psi = 0.5


def test_invalid_patch_sizes():
    with pytest.raises(ValueError, match="patch_min"):
        make_task({"task": "gan"}, ["patch_min=10", "patch_max=4"])


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

"""Pretrained generators as forward models: loading, freezing, resizing, truncation, inversion."""

import importlib.util
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dfm.generators import (
    DCGANGenerator,
    GeneratorError,
    GeneratorForward,
    bundled_weights_path,
    load_generator,
)

needs_weights = pytest.mark.skipif(
    importlib.util.find_spec("gan_face_generate") is None,
    reason="pretrained DCGAN weights missing: pip install --no-deps gan-face-generate",
)


@pytest.fixture(scope="module")
def face_generator():
    return load_generator()


def latents(n, seed=0, dim=100):
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))


@needs_weights
def test_bundled_weights_load_strictly_and_are_frozen(face_generator):
    file_state = torch.load(bundled_weights_path(), map_location="cpu", weights_only=True)["netG_state_dict"]
    assert isinstance(face_generator, DCGANGenerator)
    assert face_generator.state_dict().keys() == file_state.keys()
    for key, value in file_state.items():
        torch.testing.assert_close(face_generator.state_dict()[key], value)
    assert not face_generator.training
    assert not any(p.requires_grad for p in face_generator.parameters())
    assert "gan_face_generate" not in sys.modules  # found, never imported (its code needs torchvision)


@needs_weights
def test_images_are_in_range_deterministic_and_varied(face_generator):
    forward = GeneratorForward(face_generator)
    z = latents(8)
    with torch.no_grad():
        images = forward(z, None)
        again = forward(z, None)
    assert images.shape == (8, 3, 64, 64)
    assert images.min() >= -1 and images.max() <= 1
    torch.testing.assert_close(images, again, rtol=0, atol=0)
    assert images.std(0).mean() > 0.2  # different latents, different faces (measured: 0.38)


@needs_weights
def test_generator_stays_frozen_in_eval_and_out_of_checkpoints_inside_a_training_parent(face_generator):
    parent = nn.ModuleDict({"denoiser": nn.Linear(4, 4), "observe": GeneratorForward(face_generator)})
    parent.train()
    assert parent["denoiser"].training and parent["observe"].training
    assert not any(m.training for m in parent["observe"].generator.modules())
    # only the learned weights are parameters and state: the generator has its own file
    assert set(parent.state_dict()) == {"denoiser.weight", "denoiser.bias"}
    assert len(list(parent.parameters())) == 2
    parent.double()  # but it follows dtype/device moves
    assert all(p.dtype == torch.float64 for p in parent["observe"].generator.parameters())
    parent.float()
    # eval-mode BatchNorm: an image does not depend on the rest of its batch
    z = latents(4)
    with torch.no_grad():
        torch.testing.assert_close(parent["observe"](z)[:1], parent["observe"](z[:1]), rtol=1e-4, atol=1e-5)


def test_gradients_of_a_small_generator_are_correct():
    small = DCGANGenerator(latent_dim=5, width=4).double().eval()
    forward = GeneratorForward(small, resolution=32)
    z = torch.randn(2, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0), requires_grad=True)
    assert torch.autograd.gradcheck(forward, (z,), fast_mode=True)


@needs_weights
def test_gradients_reach_the_latent_and_not_the_weights(face_generator):
    z = latents(2).requires_grad_(True)
    GeneratorForward(face_generator)(z).square().mean().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    assert all(p.grad is None for p in face_generator.parameters())


@needs_weights
def test_resolution(face_generator):
    z = latents(2)
    with torch.no_grad():
        native = GeneratorForward(face_generator, resolution=None)(z)
        small = GeneratorForward(face_generator, resolution=32)(z)
        large = GeneratorForward(face_generator, resolution=96)(z)
    assert native.shape == (2, 3, 64, 64) and small.shape == (2, 3, 32, 32) and large.shape == (2, 3, 96, 96)
    torch.testing.assert_close(small, F.avg_pool2d(native, 2))  # area downsampling = box filter
    assert large.min() >= -1 and large.max() <= 1


def test_truncation():
    G = DCGANGenerator(latent_dim=16, width=8)

    def draw(psi):
        return G.prior_latents(1000, torch.Generator().manual_seed(3), psi)

    torch.testing.assert_close(draw(0.0), torch.zeros(1000, 16))
    torch.testing.assert_close(draw(0.5), 0.5 * draw(1.0))
    assert draw(0.7).std().item() == pytest.approx(0.7, rel=0.05)
    u = torch.randn(3, 16)
    torch.testing.assert_close(G.latents_from_noise(u, 0.5), 0.5 * u)


def test_weight_files_plain_or_wrapped(tmp_path):
    small = DCGANGenerator(width=8)
    torch.save(small.state_dict(), tmp_path / "plain.pt")
    torch.save({"netG_state_dict": small.state_dict()}, tmp_path / "wrapped.tar")
    z = latents(2)
    expected = small.eval()(z)
    for name in ("plain.pt", "wrapped.tar"):
        loaded = load_generator(tmp_path / name, width=8)
        torch.testing.assert_close(loaded(z), expected)


def test_errors_name_the_file(tmp_path, monkeypatch):
    missing = tmp_path / "missing.pt"
    with pytest.raises(GeneratorError, match="not found.*missing.pt"):
        load_generator(missing)

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a torch file")
    with pytest.raises(GeneratorError, match="cannot read.*garbage.pt"):
        load_generator(garbage)

    not_a_state_dict = tmp_path / "list.pt"
    torch.save([1, 2, 3], not_a_state_dict)
    with pytest.raises(GeneratorError, match="list.pt holds no state dict"):
        load_generator(not_a_state_dict)

    narrow = tmp_path / "width8.pt"
    torch.save(DCGANGenerator(width=8).state_dict(), narrow)
    with pytest.raises(GeneratorError, match=r"width8.pt.*shape mismatch: main\.0\.weight"):
        load_generator(narrow)

    with pytest.raises(GeneratorError, match="width8.pt.*unknown generator architecture 'biggan'"):
        load_generator(narrow, architecture="biggan")

    monkeypatch.setattr("dfm.generators._BUNDLED_PACKAGE", "no_such_package_dfm_test")
    with pytest.raises(GeneratorError, match="pip install --no-deps gan-face-generate"):
        load_generator()

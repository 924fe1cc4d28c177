"""LPIPS: loading from torchvision/lpips-layout files with strict checks, the distance's basic
properties, agreement with the formula written out by hand, and the warn-and-skip path."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dfm.networks.lpips import CHANNELS, LPIPS, LPIPSWeightsError, load_lpips

SIZE = {"vgg": 32, "alex": 64}


def save_weights(tmp_path, backbone: str, *, bare_features: bool = False) -> tuple[str, str]:
    """Random but well-scaled backbone weights in torchvision layout (with classifier keys) and
    positive linear weights in lpips layout; returns the two paths."""
    torch.manual_seed(0)
    model = LPIPS(backbone)
    with torch.no_grad():
        for m in model.backbone.features:
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                m.bias.normal_(0, 0.01)
    state = dict(model.backbone.state_dict())
    if bare_features:
        state = {k.removeprefix("features."): v for k, v in state.items()}
    else:
        state["classifier.0.weight"] = torch.randn(8, 4)
        state["classifier.0.bias"] = torch.randn(8)
    backbone_path, linear_path = tmp_path / f"{backbone}_net.pth", tmp_path / f"{backbone}_lin.pth"
    torch.save(state, backbone_path)
    lin = {f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1) + 0.1 for k, c in enumerate(CHANNELS[backbone])}
    torch.save(lin, linear_path)
    return str(backbone_path), str(linear_path)


@pytest.fixture(params=["vgg", "alex"])
def loaded(request, tmp_path):
    backbone = request.param
    paths = save_weights(tmp_path, backbone)
    return LPIPS.from_files(*paths, backbone=backbone), paths, backbone


def images(backbone: str, n: int = 2, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    s = SIZE[backbone]
    return torch.rand(n, 3, s, s, generator=g) * 2 - 1


def test_from_files_loads_the_files_and_freezes(loaded):
    model, (backbone_path, linear_path), _ = loaded
    net, lin = torch.load(backbone_path, weights_only=True), torch.load(linear_path, weights_only=True)
    assert torch.equal(model.backbone.features[0].weight, net["features.0.weight"])
    assert torch.equal(model.linear.lin4.model[1].weight, lin["lin4.model.1.weight"])
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())


def test_bare_features_state_dict_loads(tmp_path):
    model = LPIPS.from_files(*save_weights(tmp_path, "alex", bare_features=True), backbone="alex")
    x = images("alex")
    assert torch.equal(model(x, x), torch.zeros(2))


def test_identical_zero_symmetric_nonnegative(loaded):
    model, _, backbone = loaded
    x, y = images(backbone, seed=1), images(backbone, seed=2)
    d = model(x, y)
    assert d.shape == (2,)
    assert torch.equal(model(x, x), torch.zeros(2))
    assert (d > 0).all()
    torch.testing.assert_close(d, model(y, x))


def test_monotone_in_noise_scale(loaded):
    model, _, backbone = loaded
    x = images(backbone, n=1)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    d = torch.cat([model(x, (x + s * noise).clamp(-1, 1)) for s in (0.02, 0.05, 0.1, 0.2, 0.4)])
    assert (d.diff() > 0).all(), d


def test_gradient_reaches_input(loaded):
    model, _, backbone = loaded
    x, y = images(backbone, seed=1), images(backbone, seed=2)
    x.requires_grad_(True)
    model(x, y).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_matches_the_formula_by_hand(loaded):
    model, (_, linear_path), backbone = loaded
    lin = torch.load(linear_path, weights_only=True)
    x, y = images(backbone, seed=1), images(backbone, seed=2)
    expected = torch.zeros(2)
    for k, (fx, fy) in enumerate(zip(model.features(x), model.features(y), strict=True)):
        nx = fx / (fx.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        ny = fy / (fy.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        w = lin[f"lin{k}.model.1.weight"].view(1, -1, 1, 1)
        expected += ((nx - ny) ** 2 * w).sum(1).mean(dim=(1, 2))
    assert [f.shape[1] for f in model.features(x)] == list(CHANNELS[backbone])
    torch.testing.assert_close(model(x, y), expected, rtol=1e-5, atol=1e-6)


def test_follows_dtype(loaded):
    model, _, backbone = loaded
    x, y = images(backbone, seed=1), images(backbone, seed=2)
    d32 = model(x, y)
    d64 = model.to(torch.float64)(x.double(), y.double())
    assert d64.dtype == torch.float64
    torch.testing.assert_close(d64.float(), d32, rtol=1e-4, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_runs_on_cuda(loaded):
    model, _, backbone = loaded
    x, y = images(backbone, seed=1), images(backbone, seed=2)
    torch.testing.assert_close(model.cuda()(x.cuda(), y.cuda()).cpu(), model.cpu()(x, y), rtol=1e-3, atol=1e-5)


def test_load_lpips_without_paths_warns_and_returns_none(tmp_path):
    with pytest.warns(UserWarning, match="LPIPS term is off.*vgg16-397923af.pth.*v0.1/vgg.pth"):
        assert load_lpips(None, None) is None
    with pytest.warns(UserWarning, match="no linear weights"):
        assert load_lpips(str(tmp_path / "net.pth"), None) is None


def test_load_lpips_with_paths(tmp_path):
    assert isinstance(load_lpips(*save_weights(tmp_path, "alex"), backbone="alex"), LPIPS)


def test_missing_file_raises(tmp_path):
    _, linear_path = save_weights(tmp_path, "alex")
    missing = str(tmp_path / "nope.pth")
    with pytest.raises(LPIPSWeightsError, match="nope.pth.*does not exist"):
        LPIPS.from_files(missing, linear_path, backbone="alex")


def test_garbage_file_raises(tmp_path):
    backbone_path, _ = save_weights(tmp_path, "alex")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(LPIPSWeightsError, match="garbage.pth.*could not be read"):
        LPIPS.from_files(backbone_path, str(garbage), backbone="alex")


def test_wrong_linear_key_raises(tmp_path):
    backbone_path, linear_path = save_weights(tmp_path, "alex")
    lin = torch.load(linear_path, weights_only=True)
    lin["lin5.model.1.weight"] = lin.pop("lin4.model.1.weight")
    torch.save(lin, linear_path)
    with pytest.raises(LPIPSWeightsError, match=r"alex_lin.pth.*missing keys: lin4.*unexpected keys: lin5"):
        LPIPS.from_files(backbone_path, linear_path, backbone="alex")


def test_wrong_shape_and_wrong_backbone_raise(tmp_path):
    backbone_path, linear_path = save_weights(tmp_path, "alex")
    lin = torch.load(linear_path, weights_only=True)
    lin["lin0.model.1.weight"] = torch.rand(1, 3, 1, 1)
    bad_lin = tmp_path / "bad_lin.pth"
    torch.save(lin, bad_lin)
    with pytest.raises(LPIPSWeightsError, match=r"bad_lin.pth.*shape mismatch: lin0.model.1.weight \(checkpoint \(1, 3, 1, 1\)"):
        LPIPS.from_files(backbone_path, str(bad_lin), backbone="alex")
    with pytest.raises(LPIPSWeightsError, match="alex_net.pth"):  # AlexNet weights for a VGG
        LPIPS.from_files(backbone_path, linear_path, backbone="vgg")


def test_input_checks():
    model = LPIPS("vgg")
    with pytest.raises(ValueError, match="one shape"):
        model(torch.zeros(1, 3, 32, 32), torch.zeros(1, 3, 32, 16))
    with pytest.raises(ValueError, match="at least 16 px"):
        model(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="unknown LPIPS backbone"):
        LPIPS("squeeze")

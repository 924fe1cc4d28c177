"""dfm.metrics for images: PSNR/SSIM/LPIPS per image, FID and KID against reference formulas (scipy) and
torchmetrics, the FID Inception network's weight-file contract, and the diversity of a context's samples."""

from __future__ import annotations

import functools
import math
import warnings

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

from dfm.metrics import (
    InceptionFeatures,
    MetricWeightsError,
    best_of_k,
    fid,
    fid_from_features,
    image_features,
    kid,
    kid_from_features,
    lpips_distance,
    pairwise_diversity,
    psnr,
    ssim,
)
from dfm.networks.lpips import LPIPS


def _gen(seed):
    return torch.Generator().manual_seed(seed)


class _Flatten(nn.Module):
    """A stand-in feature network: the pixels of tiny images are the features."""

    def __init__(self, num_features):
        super().__init__()
        self.num_features = num_features

    def forward(self, x):
        return x.flatten(1)


# --- FID / KID on features ---------------------------------------------------------------------


@pytest.mark.parametrize("n, d", [(300, 32), (50, 128)])  # full-rank and rank-deficient covariances
def test_fid_of_a_set_with_itself_is_zero(n, d):
    a = torch.randn(n, d, generator=_gen(0))
    assert fid_from_features(a, a.clone()) == pytest.approx(0, abs=1e-6)


def test_fid_matches_scipy_sqrtm():
    g = _gen(1)
    a = torch.randn(400, 16, generator=g, dtype=torch.float64)
    mixing = torch.randn(16, 16, generator=g, dtype=torch.float64)
    b = 0.5 + torch.randn(350, 16, generator=g, dtype=torch.float64) @ mixing
    x, y = a.numpy(), b.numpy()
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    ref = np.sum((x.mean(0) - y.mean(0)) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)
    assert fid_from_features(a, b) == pytest.approx(ref, rel=1e-8)
    assert fid_from_features(a.float(), b.float()) == pytest.approx(ref, rel=1e-5)  # float32 input, float64 inside


def _mmd2_loop(x, y):
    """The unbiased MMD^2 of Binkowski et al. written out pair by pair."""
    m, d = x.shape

    def k(u, v):
        return (u @ v / d + 1) ** 3

    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / m**2
    return xx + yy - 2 * xy


def test_kid_matches_direct_loop_on_the_documented_subsets():
    g = _gen(2)
    a, b = torch.randn(60, 8, generator=g), 0.3 + torch.randn(50, 8, generator=g)
    mean, std = kid_from_features(a, b, subsets=4, subset_size=30, seed=7)
    replay = _gen(7)
    scores = []
    for _ in range(4):
        ia, ib = torch.randperm(60, generator=replay)[:30], torch.randperm(50, generator=replay)[:30]
        scores.append(_mmd2_loop(a[ia].double().numpy(), b[ib].double().numpy()))
    assert mean == pytest.approx(np.mean(scores), rel=1e-9)
    assert std == pytest.approx(np.std(scores), rel=1e-9)


def test_kid_caps_the_subset_size():
    g = _gen(3)
    a, b = torch.randn(25, 5, generator=g), torch.randn(30, 5, generator=g) * 2
    mean, std = kid_from_features(a, b, subsets=1, subset_size=1000, seed=0)
    replay = _gen(0)
    ia, ib = torch.randperm(25, generator=replay), torch.randperm(30, generator=replay)[:25]
    assert mean == pytest.approx(_mmd2_loop(a[ia].double().numpy(), b[ib].double().numpy()), rel=1e-9)
    assert std == 0


def test_fid_kid_reject_bad_shapes():
    with pytest.raises(ValueError, match="feature tensors"):
        fid_from_features(torch.zeros(5, 3), torch.zeros(5, 4))
    with pytest.raises(ValueError, match="at least 2"):
        kid_from_features(torch.zeros(1, 3), torch.zeros(5, 3))


# --- the torchmetrics path ---------------------------------------------------------------------


def _unit_features(images):
    """What _Flatten sees of images in [-1, 1]: the extractor is handed [0, 1]."""
    return ((images + 1) / 2).flatten(1)


def test_image_features_maps_to_unit_range_and_batches():
    images = torch.rand(7, 3, 2, 2, generator=_gen(21)) * 2 - 1
    torch.testing.assert_close(image_features(_Flatten(12), images, batch_size=3), _unit_features(images))
    torch.testing.assert_close(image_features(_Flatten(12), iter(images.split(2))), _unit_features(images))


def test_torchmetrics_fid_agrees_with_fid_from_features():
    g = _gen(4)
    real = torch.rand(300, 3, 2, 2, generator=g) * 2 - 1
    fake = torch.rand(250, 3, 2, 2, generator=g) ** 2 * 2 - 1
    ref = fid_from_features(_unit_features(real), _unit_features(fake))
    assert ref > 0.01
    assert fid(real, fake, _Flatten(12), batch_size=64) == pytest.approx(ref, rel=1e-5)
    assert fid(real.split(100), iter(fake.split(7)), _Flatten(12)) == pytest.approx(ref, rel=1e-5)  # batches


def test_torchmetrics_kid_agrees_with_kid_from_features():
    from torchmetrics.image.kid import KernelInceptionDistance

    g = _gen(5)
    real, fake = torch.rand(80, 3, 2, 2, generator=g), torch.rand(80, 3, 2, 2, generator=g) ** 1.5  # [0, 1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "will save all extracted features"
        metric = KernelInceptionDistance(feature=_Flatten(12), subsets=1, subset_size=80)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    tm_mean, _ = metric.compute()
    mean, _ = kid_from_features(real.flatten(1), fake.flatten(1), subsets=1, subset_size=80)
    assert mean == pytest.approx(tm_mean.item(), rel=1e-4)  # all samples: the permutation does not matter
    real, fake = 2 * real - 1, 2 * fake - 1  # kid() takes [-1, 1]
    assert kid(real, fake, _Flatten(12), subsets=3, subset_size=40, seed=1) == kid_from_features(
        _unit_features(real), _unit_features(fake), subsets=3, subset_size=40, seed=1
    )


# --- the FID Inception -------------------------------------------------------------------------

# Facts about pytorch-fid's pt_inception-2015-12-05-6726825d.pth: pytorch-fid loads it strictly into
# torchvision's Inception3(num_classes=1008, aux_logits=False) with the FID blocks swapped in, so its
# keys are that module's: 94 conv+bn units (5 keys each plus bn.num_batches_tracked, which the file
# holds: pytorch-fid issue #34 shows old torch rejecting them as unexpected) and fc.
KNOWN_SHAPES = {
    "Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3),
    "Conv2d_1a_3x3.bn.running_var": (32,),
    "Conv2d_4a_3x3.conv.weight": (192, 80, 3, 3),
    "Mixed_5b.branch_pool.conv.weight": (32, 192, 1, 1),
    "Mixed_6b.branch7x7_2.conv.weight": (128, 128, 1, 7),
    "Mixed_7a.branch3x3_2.conv.weight": (320, 192, 3, 3),
    "Mixed_7c.branch3x3dbl_3b.conv.weight": (384, 384, 3, 1),
    "Mixed_7c.branch_pool.conv.weight": (192, 2048, 1, 1),
    "Mixed_7c.branch_pool.bn.num_batches_tracked": (),
    "fc.weight": (1008, 2048),
    "fc.bias": (1008,),
}
SUFFIXES = {"conv.weight", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var", "bn.num_batches_tracked"}


def test_inception_state_dict_has_the_weight_files_keys():
    net = InceptionFeatures()
    state = net.state_dict()
    assert len(state) == 566
    units = {k.rsplit(".", 2)[0] for k in state if k != "fc.weight" and k != "fc.bias"}
    assert len(units) == 94
    for unit in units:
        assert {k[len(unit) + 1 :] for k in state if k.startswith(unit + ".")} == SUFFIXES
    assert not any(k.startswith("AuxLogits") for k in state)
    for key, shape in KNOWN_SHAPES.items():
        assert tuple(state[key].shape) == shape, key
    assert sum(p.numel() for p in net.parameters()) == 23_850_960  # torchvision's 27,161,264 less aux, 1008 classes


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    torch.manual_seed(0)
    state = InceptionFeatures().state_dict()
    path = tmp_path_factory.mktemp("inception") / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(state, path)
    return path, state


@pytest.fixture(scope="module")
def inception(weights_file):
    return InceptionFeatures.from_file(weights_file[0])


def test_from_file_loads_a_state_dict_with_the_exact_keys(weights_file, inception):
    loaded = inception.state_dict()
    assert loaded.keys() == weights_file[1].keys()
    assert all(torch.equal(loaded[k], v) for k, v in weights_file[1].items())
    assert not inception.training and not any(p.requires_grad for p in inception.parameters())
    inception.train()
    assert not any(m.training for m in inception.modules())


def test_features_for_any_size_and_8_bit_quantisation(inception):
    x = torch.round(torch.rand(2, 3, 64, 64, generator=_gen(6)) * 255) / 255
    jitter = (torch.rand(2, 3, 64, 64, generator=_gen(7)) - 0.5) * 0.9 / 255  # under half a step
    f = inception(torch.cat([x, (x + jitter).clamp(0, 1)]))
    assert f.shape == (4, 2048) and f.isfinite().all()
    torch.testing.assert_close(f[:2], f[2:], rtol=0, atol=0)
    big = inception(torch.rand(2, 3, 128, 128, generator=_gen(8)))
    assert big.shape == (2, 2048) and big.isfinite().all()
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        inception(torch.rand(3, 64, 64))


def test_from_file_tolerates_missing_batch_counters_only(tmp_path):
    # Stride-0 (expanded) tensors keep this full-size state dict ~0.2 MB on disk instead of ~95 MB.
    shapes = {k: v.shape for k, v in InceptionFeatures().state_dict().items()}
    state = {k: torch.ones(()).expand(s) for k, s in shapes.items() if not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "converted.pth")
    net = InceptionFeatures.from_file(tmp_path / "converted.pth")
    assert torch.equal(net.fc.weight, torch.ones(1008, 2048))


def test_from_file_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(MetricWeightsError, match=r"nope\.pth.*does not exist.*pt_inception-2015-12-05"):
        InceptionFeatures.from_file(tmp_path / "nope.pth")


def test_from_file_wrong_keys_and_shapes_are_listed(tmp_path):
    path = tmp_path / "wrong.pth"
    torch.save({"Conv2d_1a_3x3.conv.weight": torch.zeros(32, 3, 5, 5), "AuxLogits.fc.weight": torch.zeros(1)}, path)
    with pytest.raises(MetricWeightsError) as err:
        InceptionFeatures.from_file(path)
    message = str(err.value)
    assert "wrong.pth" in message
    assert "Conv2d_1a_3x3.conv.weight (checkpoint (32, 3, 5, 5), model (32, 3, 3, 3))" in message
    assert "unexpected keys: AuxLogits.fc.weight" in message and "missing keys: " in message
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(MetricWeightsError, match=r"list\.pth.*does not hold a state dict"):
        InceptionFeatures.from_file(tmp_path / "list.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(MetricWeightsError, match=r"junk\.pth.*could not be read"):
        InceptionFeatures.from_file(tmp_path / "junk.pth")


# --- per-image scores --------------------------------------------------------------------------


def test_psnr_identical_and_known_mse():
    truth01 = 0.25 + 0.5 * torch.rand(3, 16, 16, generator=_gen(9))
    sign = torch.randint(0, 2, (2, 3, 16, 16), generator=_gen(10)) * 2 - 1
    pred01 = truth01 + 0.1 * sign  # MSE exactly 0.01 in [0, 1], no clamping
    truth, pred = 2 * truth01 - 1, 2 * pred01 - 1
    assert (psnr(truth[None], truth) > 100).all()
    values = psnr(pred, truth)
    assert values.shape == (2,)
    torch.testing.assert_close(values, torch.full((2,), 10 * math.log10(1 / 0.01)), rtol=1e-4, atol=0)
    torch.testing.assert_close(psnr(pred, truth.expand_as(pred)), values)
    with pytest.raises(ValueError, match="same size"):
        psnr(pred, truth[:, :8])


def test_ssim_identical_is_one_and_noise_lowers_it():
    truth = torch.rand(3, 32, 32, generator=_gen(11)) * 2 - 1
    noisy = (truth + 0.3 * torch.randn(2, 3, 32, 32, generator=_gen(12))).clamp(-1, 1)
    torch.testing.assert_close(ssim(truth[None], truth), torch.ones(1), rtol=0, atol=1e-5)
    values = ssim(noisy, truth)
    assert values.shape == (2,) and (values < 0.9).all()


def test_lpips_distance_wraps_the_network_and_refuses_none():
    torch.manual_seed(0)
    net = LPIPS("alex").eval()  # random weights (non-negative linear layers): enough to test the wrapper
    for w in net.linear.weights():
        w.data.abs_()
    truth = torch.rand(3, 32, 32, generator=_gen(13)) * 2 - 1
    pred = torch.rand(2, 3, 32, 32, generator=_gen(14)) * 2 - 1
    values = lpips_distance(net, pred, truth)
    assert values.shape == (2,) and (values > 0).all()
    torch.testing.assert_close(values, net(pred, truth.expand_as(pred)))
    assert lpips_distance(net, truth[None], truth).abs().max() < 1e-6
    with pytest.raises(MetricWeightsError, match="load_lpips"):
        lpips_distance(None, pred, truth)


# --- diversity and best of K -------------------------------------------------------------------


def _l1(x, y):
    return (x - y).abs().mean(dim=(1, 2, 3))


def test_diversity_zero_for_identical_and_grows_with_difference():
    base = torch.rand(1, 3, 8, 8, generator=_gen(15)) * 2 - 1
    noise = torch.randn(5, 3, 8, 8, generator=_gen(16))
    assert pairwise_diversity(base.expand(5, -1, -1, -1), None) == 0
    values = [pairwise_diversity(base + s * noise, None) for s in (0.05, 0.1, 0.2, 0.4)]
    assert all(a < b for a, b in zip(values, values[1:]))
    samples = base + 0.4 * noise
    pairs = [_l1(samples[i : i + 1], samples[j : j + 1]).item() for i in range(5) for j in range(i + 1, 5)]
    assert values[-1] == pytest.approx(np.mean(pairs), rel=1e-6)  # the mean over the 10 pairs i < j
    assert pairwise_diversity(samples, _l1) == pytest.approx(values[-1], rel=1e-6)  # through a callable


def test_diversity_mask_restricts_the_region():
    base = torch.rand(1, 3, 8, 8, generator=_gen(17)) * 2 - 1
    noise = torch.randn(4, 3, 8, 8, generator=_gen(18))
    mask = torch.zeros(1, 8, 8, dtype=torch.bool)
    mask[:, :, :2] = True  # a quarter of the image
    outside = base + 0.5 * noise * ~mask
    inside = base + 0.5 * noise * mask
    for distance in (None, _l1):
        assert pairwise_diversity(outside, distance, mask) == 0
        assert pairwise_diversity(outside, distance) > 0
    # The pixel distance averages over the region: differences confined to it count 4x.
    assert pairwise_diversity(inside, None, mask) == pytest.approx(4 * pairwise_diversity(inside, None), rel=1e-6)
    with pytest.raises(ValueError, match="no pixel"):
        pairwise_diversity(inside, None, torch.zeros(1, 8, 8))
    with pytest.raises(ValueError, match="K >= 2"):
        pairwise_diversity(inside[:1], None)


def test_best_of_k():
    truth = torch.rand(3, 32, 32, generator=_gen(19)) * 2 - 1
    noise = torch.randn(3, 3, 32, 32, generator=_gen(20))
    samples = truth + torch.tensor([0.3, 0.05, 0.1]).view(3, 1, 1, 1) * noise
    assert best_of_k(samples, truth, psnr) == psnr(samples, truth).max().item()
    assert best_of_k(samples, truth, psnr) == psnr(samples[1:2], truth).item()
    l1 = best_of_k(samples, truth, lambda s, t: _l1(s, t.expand_as(s)), higher_is_better=False)
    assert l1 == pytest.approx(_l1(samples[1:2], truth[None]).item())
    net = LPIPS("alex").eval()
    assert best_of_k(samples, truth, functools.partial(lpips_distance, net), higher_is_better=False) >= 0

import pytest
import scipy.stats
import torch

import dfm.metrics
from dfm.metrics import energy_distance


def _naive(x, y):
    x, y = x.double(), y.double()
    return 2 * torch.cdist(x, y).mean() - torch.cdist(x, x).mean() - torch.cdist(y, y).mean()


def test_zero_for_identical_sets():
    x = torch.randn(300, 3, generator=torch.Generator().manual_seed(0))
    assert energy_distance(x, x.clone()).item() == 0.0


def test_matches_scipy_squared_in_1d():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(57, 1, generator=g, dtype=torch.float64)
    y = 0.5 + 2 * torch.rand(83, 1, generator=g, dtype=torch.float64)
    ref = scipy.stats.energy_distance(x[:, 0].numpy(), y[:, 0].numpy()) ** 2
    assert energy_distance(x, y).item() == pytest.approx(ref, rel=1e-9)


def test_symmetric_and_dtype():
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(100, 4, generator=g), torch.randn(150, 4, generator=g) + 0.3
    out = energy_distance(x, y)
    assert out.shape == () and out.dtype == torch.float32
    torch.testing.assert_close(out, energy_distance(y, x))


def test_increases_with_mean_shift():
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(500, 2, generator=g), torch.randn(500, 2, generator=g)
    values = [energy_distance(x, y + s).item() for s in (0.0, 0.25, 0.5, 1.0, 2.0)]
    assert all(a < b for a, b in zip(values, values[1:]))


def test_v_statistic_floor_for_same_distribution():
    """E[ED] = E|X-X'| (1/n + 1/m) for two independent samples of one distribution."""
    g = torch.Generator().manual_seed(4)
    n, m, d = 200, 200, 2
    eds = torch.stack([energy_distance(torch.randn(n, d, generator=g), torch.randn(m, d, generator=g)) for _ in range(100)])
    mean_dist = torch.pi**0.5  # E|X-X'| for standard normals in 2-D: 2 * Gamma(3/2)
    assert (eds > 0).all()
    assert eds.mean().item() == pytest.approx(mean_dist * (1 / n + 1 / m), rel=0.2)  # ~4 standard errors


def test_chunked_computation_matches_naive(monkeypatch):
    monkeypatch.setattr(dfm.metrics.distances, "_CHUNK_ELEMENTS", 1000)  # many small chunks
    g = torch.Generator().manual_seed(5)
    x, y = torch.randn(230, 3, generator=g), torch.randn(170, 3, generator=g) * 1.5
    torch.testing.assert_close(energy_distance(x, y).double(), _naive(x, y), rtol=1e-6, atol=0)

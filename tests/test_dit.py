"""The DiT: shapes at any resolution, adaLN-Zero identity at initialisation, conditioning, checkpointing."""

from __future__ import annotations

import pytest
import torch

from dfm.networks.dit import SIZES, DiT, sincos_embedding_2d


def tiny(**kw) -> DiT:
    return DiT(5, 3, size="T", width=32, depth=2, heads=2, **kw)


def randomise_zero_layers(model: DiT) -> None:
    """Give the zero-initialised layers weights, so outputs depend on the input."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if not p.abs().sum():
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


def test_output_shape_at_any_resolution_and_zero_at_init():
    model = tiny()
    t = torch.tensor([3.0, 500.0])
    for h, w in ((8, 8), (16, 12), (32, 32)):
        out = model(torch.randn(2, 5, h, w), t)
        assert out.shape == (2, 3, h, w)
        assert torch.equal(out, torch.zeros_like(out))  # adaLN-Zero + zero output layer


def test_blocks_start_as_identity():
    model = tiny()
    x, c = torch.randn(2, 7, 32), torch.randn(2, 32)
    for block in model.blocks:
        assert torch.equal(block(x, c), x)


def test_unpatchify_is_pixel_aligned():
    """Each output pixel must come from the token of the patch that contains it: changing one
    input patch changes exactly that patch of the output when there is no attention mixing."""
    model = DiT(1, 1, size="T", width=32, depth=0, heads=2, patch_size=4)
    randomise_zero_layers(model)
    x = torch.randn(1, 1, 16, 16)
    y = x.clone()
    y[..., 4:8, 8:12] += 1.0
    changed = (model(x, torch.zeros(1)) != model(y, torch.zeros(1)))[0, 0]
    expected = torch.zeros(16, 16, dtype=torch.bool)
    expected[4:8, 8:12] = True
    assert torch.equal(changed, expected)


def test_depends_on_time_and_condition():
    model = tiny(cond_dim=4)
    randomise_zero_layers(model)
    x, cond = torch.randn(1, 5, 8, 8), torch.randn(1, 4)
    base = model(x, torch.tensor([10.0]), cond)
    assert not torch.allclose(base, model(x, torch.tensor([900.0]), cond))
    assert not torch.allclose(base, model(x, torch.tensor([10.0]), cond + 1))
    with pytest.raises(ValueError, match="conditioning vector"):
        model(x, torch.tensor([10.0]))


def test_bad_sizes_are_clear_errors():
    with pytest.raises(ValueError, match="not divisible by the patch size"):
        tiny()(torch.randn(1, 5, 9, 8), torch.zeros(1))
    with pytest.raises(ValueError, match="unknown DiT size"):
        DiT(3, 3, size="XXL")
    with pytest.raises(ValueError, match="divisible"):
        DiT(3, 3, width=30, heads=4)


def test_checkpointing_gives_the_same_values_and_gradients():
    torch.manual_seed(0)
    plain = tiny()
    randomise_zero_layers(plain)
    ckpt = tiny(checkpointing=True)
    ckpt.load_state_dict(plain.state_dict())
    x, t = torch.randn(2, 5, 8, 8), torch.tensor([1.0, 2.0])
    grads = []
    for model in (plain, ckpt):
        model.zero_grad()
        model(x, t).square().sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1])


def test_sincos_embedding():
    emb = sincos_embedding_2d(3, 5, 16)
    assert emb.shape == (15, 16)
    assert torch.unique(emb, dim=0).shape[0] == 15  # every position distinct
    # first quarter: sin of the row index at frequency 1
    torch.testing.assert_close(emb[:, 0], torch.arange(3).float().repeat_interleave(5).sin())
    # third quarter: sin of the column index
    torch.testing.assert_close(emb[:, 8], torch.arange(5).float().repeat(3).sin())


def test_paper_size_parameter_count():
    """DiT-XL/2 without the class embedding: ~675M parameters in the paper (ours has no label table)."""
    size = SIZES["XL"]
    model = DiT(4, 8, size="XL", patch_size=2).to("meta")
    n = sum(p.numel() for p in model.parameters())
    assert (size.width, size.depth, size.heads) == (1152, 28, 16)
    assert 660e6 < n < 680e6, n

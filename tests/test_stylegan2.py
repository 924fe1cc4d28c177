"""StyleGAN2 generator: official state-dict layout, the operations against slow references, spaces, loading.

No official weights are available here, so the layout is checked against a table written from the
specification (NVlabs/stylegan2-ada-pytorch ``training/networks.py`` registration order, 'paper256' FFHQ-256
configuration: channels min(16384 // res, 512), 8 mapping layers), and behaviour on small random networks.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from dfm.generators import GeneratorError, load_generator
from dfm.stylegan2 import (
    StyleGAN2Generator,
    fir_filter,
    modulated_conv2d,
    upsample2x,
)

# (key, shape) of the official G_ema.state_dict() for FFHQ-256 paper256, in state-dict order ('-': scalar)
OFFICIAL_FFHQ256 = """
synthesis.b4.const                       512,4,4
synthesis.b4.resample_filter             4,4
synthesis.b4.conv1.weight                512,512,3,3
synthesis.b4.conv1.noise_strength        -
synthesis.b4.conv1.bias                  512
synthesis.b4.conv1.resample_filter       4,4
synthesis.b4.conv1.noise_const           4,4
synthesis.b4.conv1.affine.weight         512,512
synthesis.b4.conv1.affine.bias           512
synthesis.b4.torgb.weight                3,512,1,1
synthesis.b4.torgb.bias                  3
synthesis.b4.torgb.affine.weight         512,512
synthesis.b4.torgb.affine.bias           512
synthesis.b8.resample_filter             4,4
synthesis.b8.conv0.weight                512,512,3,3
synthesis.b8.conv0.noise_strength        -
synthesis.b8.conv0.bias                  512
synthesis.b8.conv0.resample_filter       4,4
synthesis.b8.conv0.noise_const           8,8
synthesis.b8.conv0.affine.weight         512,512
synthesis.b8.conv0.affine.bias           512
synthesis.b8.conv1.weight                512,512,3,3
synthesis.b8.conv1.noise_strength        -
synthesis.b8.conv1.bias                  512
synthesis.b8.conv1.resample_filter       4,4
synthesis.b8.conv1.noise_const           8,8
synthesis.b8.conv1.affine.weight         512,512
synthesis.b8.conv1.affine.bias           512
synthesis.b8.torgb.weight                3,512,1,1
synthesis.b8.torgb.bias                  3
synthesis.b8.torgb.affine.weight         512,512
synthesis.b8.torgb.affine.bias           512
synthesis.b16.resample_filter            4,4
synthesis.b16.conv0.weight               512,512,3,3
synthesis.b16.conv0.noise_strength       -
synthesis.b16.conv0.bias                 512
synthesis.b16.conv0.resample_filter      4,4
synthesis.b16.conv0.noise_const          16,16
synthesis.b16.conv0.affine.weight        512,512
synthesis.b16.conv0.affine.bias          512
synthesis.b16.conv1.weight               512,512,3,3
synthesis.b16.conv1.noise_strength       -
synthesis.b16.conv1.bias                 512
synthesis.b16.conv1.resample_filter      4,4
synthesis.b16.conv1.noise_const          16,16
synthesis.b16.conv1.affine.weight        512,512
synthesis.b16.conv1.affine.bias          512
synthesis.b16.torgb.weight               3,512,1,1
synthesis.b16.torgb.bias                 3
synthesis.b16.torgb.affine.weight        512,512
synthesis.b16.torgb.affine.bias          512
synthesis.b32.resample_filter            4,4
synthesis.b32.conv0.weight               512,512,3,3
synthesis.b32.conv0.noise_strength       -
synthesis.b32.conv0.bias                 512
synthesis.b32.conv0.resample_filter      4,4
synthesis.b32.conv0.noise_const          32,32
synthesis.b32.conv0.affine.weight        512,512
synthesis.b32.conv0.affine.bias          512
synthesis.b32.conv1.weight               512,512,3,3
synthesis.b32.conv1.noise_strength       -
synthesis.b32.conv1.bias                 512
synthesis.b32.conv1.resample_filter      4,4
synthesis.b32.conv1.noise_const          32,32
synthesis.b32.conv1.affine.weight        512,512
synthesis.b32.conv1.affine.bias          512
synthesis.b32.torgb.weight               3,512,1,1
synthesis.b32.torgb.bias                 3
synthesis.b32.torgb.affine.weight        512,512
synthesis.b32.torgb.affine.bias          512
synthesis.b64.resample_filter            4,4
synthesis.b64.conv0.weight               256,512,3,3
synthesis.b64.conv0.noise_strength       -
synthesis.b64.conv0.bias                 256
synthesis.b64.conv0.resample_filter      4,4
synthesis.b64.conv0.noise_const          64,64
synthesis.b64.conv0.affine.weight        512,512
synthesis.b64.conv0.affine.bias          512
synthesis.b64.conv1.weight               256,256,3,3
synthesis.b64.conv1.noise_strength       -
synthesis.b64.conv1.bias                 256
synthesis.b64.conv1.resample_filter      4,4
synthesis.b64.conv1.noise_const          64,64
synthesis.b64.conv1.affine.weight        256,512
synthesis.b64.conv1.affine.bias          256
synthesis.b64.torgb.weight               3,256,1,1
synthesis.b64.torgb.bias                 3
synthesis.b64.torgb.affine.weight        256,512
synthesis.b64.torgb.affine.bias          256
synthesis.b128.resample_filter           4,4
synthesis.b128.conv0.weight              128,256,3,3
synthesis.b128.conv0.noise_strength      -
synthesis.b128.conv0.bias                128
synthesis.b128.conv0.resample_filter     4,4
synthesis.b128.conv0.noise_const         128,128
synthesis.b128.conv0.affine.weight       256,512
synthesis.b128.conv0.affine.bias         256
synthesis.b128.conv1.weight              128,128,3,3
synthesis.b128.conv1.noise_strength      -
synthesis.b128.conv1.bias                128
synthesis.b128.conv1.resample_filter     4,4
synthesis.b128.conv1.noise_const         128,128
synthesis.b128.conv1.affine.weight       128,512
synthesis.b128.conv1.affine.bias         128
synthesis.b128.torgb.weight              3,128,1,1
synthesis.b128.torgb.bias                3
synthesis.b128.torgb.affine.weight       128,512
synthesis.b128.torgb.affine.bias         128
synthesis.b256.resample_filter           4,4
synthesis.b256.conv0.weight              64,128,3,3
synthesis.b256.conv0.noise_strength      -
synthesis.b256.conv0.bias                64
synthesis.b256.conv0.resample_filter     4,4
synthesis.b256.conv0.noise_const         256,256
synthesis.b256.conv0.affine.weight       128,512
synthesis.b256.conv0.affine.bias         128
synthesis.b256.conv1.weight              64,64,3,3
synthesis.b256.conv1.noise_strength      -
synthesis.b256.conv1.bias                64
synthesis.b256.conv1.resample_filter     4,4
synthesis.b256.conv1.noise_const         256,256
synthesis.b256.conv1.affine.weight       64,512
synthesis.b256.conv1.affine.bias         64
synthesis.b256.torgb.weight              3,64,1,1
synthesis.b256.torgb.bias                3
synthesis.b256.torgb.affine.weight       64,512
synthesis.b256.torgb.affine.bias         64
mapping.w_avg                            512
mapping.fc0.weight                       512,512
mapping.fc0.bias                         512
mapping.fc1.weight                       512,512
mapping.fc1.bias                         512
mapping.fc2.weight                       512,512
mapping.fc2.bias                         512
mapping.fc3.weight                       512,512
mapping.fc3.bias                         512
mapping.fc4.weight                       512,512
mapping.fc4.bias                         512
mapping.fc5.weight                       512,512
mapping.fc5.bias                         512
mapping.fc6.weight                       512,512
mapping.fc6.bias                         512
mapping.fc7.weight                       512,512
mapping.fc7.bias                         512
"""

SMALL = {"z_dim": 32, "w_dim": 32, "img_resolution": 16, "channel_base": 64, "channel_max": 16, "num_mapping_layers": 2}
TINY = {"z_dim": 4, "w_dim": 4, "img_resolution": 8, "channel_base": 16, "channel_max": 4, "num_mapping_layers": 1}


def expected_table() -> list[tuple[str, tuple[int, ...]]]:
    rows = (line.split() for line in OFFICIAL_FFHQ256.strip().splitlines())
    return [(key, () if shape == "-" else tuple(int(d) for d in shape.split(","))) for key, shape in rows]


def small_generator(space="w", seed=0, **options) -> StyleGAN2Generator:
    """A random small network with nonzero noise strengths and w_avg, so that every input matters."""
    torch.manual_seed(seed)
    G = StyleGAN2Generator(space, **{**SMALL, **options})
    with torch.no_grad():
        for name, p in G.named_parameters():
            if name.endswith("noise_strength"):
                p.fill_(0.3)
        G.mapping.w_avg.normal_()
    return G.eval()


def test_full_config_state_dict_matches_the_official_table():
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        G = StyleGAN2Generator()
    ours = [(key, tuple(value.shape)) for key, value in G.state_dict().items()]
    assert ours == expected_table()  # same keys, shapes and order
    assert G.num_ws == 14 and G.latent_dim == 512
    assert StyleGAN2Generator("w+", img_resolution=8, channel_base=64).latent_dim == 4 * 512
    # the official config's parameter count, summed from the table: 2.10M mapping + 22.67M synthesis
    assert sum(p.numel() for p in G.parameters()) == 24_767_458
    buffers = {"mapping.w_avg"} | {k for k, _ in expected_table() if k.endswith(("resample_filter", "noise_const"))}
    assert {k for k, _ in G.named_buffers()} == buffers


def test_layer_sizes_match_published_official_module_summaries():
    """Per-layer parameter counts printed by the official training script (misc.print_module_summary) in
    NVlabs/stylegan2-ada-pytorch#182 and open-mmlab/mmgeneration#394: (in, out) channels -> count, for a
    modulated 3x3 conv with its affine layer and noise strength, and for ToRGB with its affine layer."""
    with torch.device("meta"):
        G = StyleGAN2Generator()
    s = G.synthesis

    def count(module):
        return sum(p.numel() for p in module.parameters())

    assert count(s.b4.conv1) == 2622465  # 512 -> 512
    assert count(s.b4.torgb) == 264195  # 512 -> RGB
    assert count(s.b64.conv0) == 1442561  # 512 -> 256 (b128.conv0 in the 1024 summary)
    assert count(s.b64.conv1) == 721409  # 256 -> 256
    assert count(s.b128.conv0) == 426369  # 256 -> 128 (b256.conv0 there)
    assert count(s.b128.torgb) == 66051  # 128 -> RGB
    assert count(s.b256.conv0) == 139457  # 128 -> 64 (b512.conv0 there)
    assert sum(b.numel() for b in s.b64.conv0.buffers()) == 4112  # 4x4 filter + 64x64 noise


def test_resample_filter_is_the_normalised_binomial_filter():
    taps = torch.tensor([1.0, 3.0, 3.0, 1.0])
    expected = torch.outer(taps, taps) / 64
    torch.testing.assert_close(fir_filter(), expected)
    G = small_generator()
    filters = [v for k, v in G.state_dict().items() if k.endswith("resample_filter")]
    assert filters and all(torch.equal(f, expected) for f in filters)


def test_images_have_the_right_shape_and_are_deterministic():
    G = small_generator()
    w = torch.randn(3, 32)
    with torch.no_grad():
        image, again = G(w), G(w)
    assert image.shape == (3, 3, 16, 16) and image.dtype == torch.float32
    assert torch.isfinite(image).all() and torch.equal(image, again)
    assert not torch.allclose(image[0], image[1])  # the latent matters
    with torch.no_grad():  # noise_mode 'none' drops the stored noise, which matters here
        assert not torch.allclose(small_generator(noise_mode="none")(w), image)


def test_modulated_conv_equals_per_example_convolutions():
    g = torch.Generator().manual_seed(1)
    x, weight = torch.randn(3, 5, 7, 7, generator=g), torch.randn(4, 5, 3, 3, generator=g)
    styles = torch.randn(3, 5, generator=g)
    for demodulate in (True, False):
        expected = []
        for i in range(3):
            w = weight * styles[i].view(1, 5, 1, 1)
            if demodulate:
                w = w / w.pow(2).sum((1, 2, 3), keepdim=True).add(1e-8).sqrt()
            expected.append(F.conv2d(x[i : i + 1], w, padding=1))
        torch.testing.assert_close(modulated_conv2d(x, weight, styles, demodulate=demodulate), torch.cat(expected))
    # 1x1 (ToRGB)
    rgb = torch.randn(3, 5, 1, 1, generator=g)
    expected = torch.cat([F.conv2d(x[i : i + 1], rgb * styles[i].view(1, 5, 1, 1)) for i in range(3)])
    torch.testing.assert_close(modulated_conv2d(x, rgb, styles, demodulate=False), expected)


def test_upsampling_modulated_conv_equals_the_zero_insertion_reference():
    """The specification's generic path: insert a zero after every pixel, pad (3, 2), convolve with 4 f
    (upfirdn2d), then convolve (not correlate) with the 3x3 weight without padding."""
    g = torch.Generator().manual_seed(2)
    x, weight = torch.randn(2, 3, 5, 5, generator=g), torch.randn(4, 3, 3, 3, generator=g)
    styles = torch.randn(2, 3, generator=g)
    f = fir_filter()
    expected = []
    for i in range(2):
        up = torch.zeros(1, 3, 10, 10)
        up[..., ::2, ::2] = x[i]
        up = F.conv2d(F.pad(up, (3, 2, 3, 2)), (4 * f.flip(0, 1)).expand(3, 1, 4, 4), groups=3)
        w = weight * styles[i].view(1, 3, 1, 1)
        w = w / w.pow(2).sum((1, 2, 3), keepdim=True).add(1e-8).sqrt()
        expected.append(F.conv2d(up, w.flip(2, 3)))
    result = modulated_conv2d(x, weight, styles, up_filter=f)
    assert result.shape == (2, 4, 10, 10)
    torch.testing.assert_close(result, torch.cat(expected))


def test_fir_upsampling_is_bilinear_inside_and_keeps_constants():
    """[1, 3, 3, 1] up-sampling gives each new pixel 3/4 of its nearer and 1/4 of its farther neighbour:
    bilinear interpolation with half-pixel centres; only the one-pixel border sees the zero padding."""
    f = fir_filter()
    constant = upsample2x(torch.full((1, 2, 6, 6), 0.7), f)
    assert constant.shape == (1, 2, 12, 12)
    torch.testing.assert_close(constant[..., 1:-1, 1:-1], torch.full((1, 2, 10, 10), 0.7))
    x = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(3))
    bilinear = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    torch.testing.assert_close(upsample2x(x, f)[..., 1:-1, 1:-1], bilinear[..., 1:-1, 1:-1])
    ramp = torch.arange(4.0).view(1, 1, 1, 4).expand(1, 1, 4, 4)  # x = j -> (n - 0.5) / 2 at output column n
    torch.testing.assert_close(upsample2x(ramp, f)[0, 0, 3, 1:-1], (torch.arange(1.0, 7.0) - 0.5) / 2)


def lrelu(x):
    return F.leaky_relu(x, 0.2) * math.sqrt(2)


def test_mapping_is_the_equalised_lr_mlp_of_the_specification():
    """z / rms(z), then per layer lrelu(x W^T * 0.01 / sqrt(fan_in) + 0.01 b) * sqrt(2), the last one too."""
    G = small_generator()
    with torch.no_grad():
        for p in G.mapping.parameters():
            p.normal_()
        z = torch.randn(3, 32)
        x = z / z.pow(2).mean(1, keepdim=True).add(1e-8).sqrt()
        for i in range(2):
            fc = getattr(G.mapping, f"fc{i}")
            x = lrelu(x @ fc.weight.T * 0.01 / math.sqrt(32) + 0.01 * fc.bias)
        torch.testing.assert_close(G.mapping(z), x)


def test_synthesis_layer_and_torgb_follow_the_specification():
    """conv layer: modulated conv + noise_const * noise_strength + bias, lrelu * sqrt(2), clamp to +-256;
    ToRGB: styles / sqrt(in_channels), no demodulation, + bias, clamp. Styles are affine(w) with the
    equalised-lr gain 1 / sqrt(w_dim)."""
    G = small_generator(seed=4)
    block = G.synthesis.b8
    with torch.no_grad():
        for p in block.parameters():
            p.normal_()
        x, w = torch.randn(2, 8, 8, 8), torch.randn(2, 32)  # b8 has 8 channels
        layer, torgb = block.conv1, block.torgb
        styles = w @ layer.affine.weight.T / math.sqrt(32) + layer.affine.bias
        expected = modulated_conv2d(x, layer.weight, styles) + layer.noise_const * layer.noise_strength
        expected = lrelu(expected + layer.bias.view(1, -1, 1, 1)).clamp(-256, 256)
        torch.testing.assert_close(layer(x, w), expected)
        layer.bias.fill_(1000.0)
        assert torch.equal(layer(x, w), torch.full_like(expected, 256.0))  # conv_clamp

        styles = (w @ torgb.affine.weight.T / math.sqrt(32) + torgb.affine.bias) / math.sqrt(8)
        expected = modulated_conv2d(x, torgb.weight, styles, demodulate=False) + torgb.bias.view(1, -1, 1, 1)
        torch.testing.assert_close(torgb(x, w), expected)


def test_truncation_pulls_w_towards_w_avg():
    G = small_generator()
    z = torch.randn(4, 32)
    with torch.no_grad():
        w = G.mapping(z)
        torch.testing.assert_close(G.mapping(z, truncation_psi=0.0), G.mapping.w_avg.expand(4, -1))
        assert torch.equal(G.mapping(z, truncation_psi=1.0), w)
        torch.testing.assert_close(G.mapping(z, truncation_psi=0.5), (w + G.mapping.w_avg) / 2)


def test_mapping_normalises_z():
    G = small_generator()
    z = torch.randn(2, 32)
    with torch.no_grad():
        torch.testing.assert_close(G.mapping(3.0 * z), G.mapping(z))  # only z's direction matters


def test_every_layer_reads_its_own_w():
    """ws rows go to layers in order, a block's ToRGB sharing its row with the next block's conv0:
    b4.conv1 0, b4.torgb 1, b8.conv0 1, b8.conv1 2, b8.torgb 3, b16.conv0 3, b16.conv1 4, b16.torgb 5."""
    G = small_generator()
    ws = torch.arange(G.num_ws, dtype=torch.float32).view(1, -1, 1).expand(2, -1, 32)  # row i is all i
    seen = {}
    for name, module in G.synthesis.named_modules():
        if name.endswith("affine"):
            module.register_forward_hook(lambda m, args, out, name=name: seen.update({name[:-7]: args[0]}))
    with torch.no_grad():
        G.synthesis(ws)
    expected = {"b4.conv1": 0, "b4.torgb": 1, "b8.conv0": 1, "b8.conv1": 2, "b8.torgb": 3,
                "b16.conv0": 3, "b16.conv1": 4, "b16.torgb": 5}
    assert G.num_ws == 6 and seen.keys() == expected.keys()
    for layer, row in expected.items():
        assert torch.equal(seen[layer], torch.full((2, 32), float(row))), layer


def test_spaces_agree():
    z = torch.randn(2, 32)
    G_w, G_z, G_plus = (small_generator(space) for space in ("w", "z", "w+"))
    assert (G_w.latent_dim, G_z.latent_dim, G_plus.latent_dim) == (32, 32, 6 * 32)
    with torch.no_grad():
        w = G_w.mapping(z)
        from_w = G_w(w)
        assert torch.equal(G_z(z), from_w)
        assert torch.equal(G_plus(w.repeat(1, G_plus.num_ws)), from_w)  # all rows equal -> the w image exactly
        assert torch.equal(G_w.to_ws(w, "w"), G_w.to_ws(z, "z"))
        assert torch.equal(G_w.to_ws(w[:, None].repeat(1, 6, 1), "w+"), G_w.to_ws(w))
        mixed = w[:, None].repeat(1, 6, 1)
        mixed[:, 4:] = torch.randn(2, 2, 32)
        assert not torch.allclose(G_plus(mixed.flatten(1)), from_w)


def test_prior_latents_in_each_space():
    def g():
        return torch.Generator().manual_seed(5)

    G_w, G_z, G_plus = (small_generator(space) for space in ("w", "z", "w+"))
    with torch.no_grad():
        z = G_z.prior_latents(4, g())
        assert torch.equal(z, torch.randn(4, 32, generator=g()))
        w = G_w.prior_latents(4, g(), truncation_psi=0.5)
        torch.testing.assert_close(w, G_w.mapping(z, truncation_psi=0.5))
        torch.testing.assert_close(G_w.prior_latents(4, g(), truncation_psi=0.0), G_w.mapping.w_avg.expand(4, -1))
        plus = G_plus.prior_latents(4, g(), truncation_psi=0.5)
        assert plus.shape == (4, G_plus.latent_dim)
        torch.testing.assert_close(plus.view(4, 6, 32), w[:, None].expand(-1, 6, -1))
    with pytest.raises(ValueError, match="truncat"):
        G_z.prior_latents(4, g(), truncation_psi=0.5)


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="space"):
        StyleGAN2Generator("x", **SMALL)
    with pytest.raises(ValueError, match="noise_mode"):
        StyleGAN2Generator(noise_mode="random", **SMALL)
    with pytest.raises(ValueError, match="power of two"):
        StyleGAN2Generator(**{**SMALL, "img_resolution": 24})
    G = small_generator("w+")
    with pytest.raises(ValueError, match=r"\(B, 192\)"):
        G(torch.randn(2, 32))
    with pytest.raises(ValueError, match=r"\(B, 6, 32\)"):
        G.synthesis(torch.randn(2, 5, 32))


def test_gradients_reach_the_latent():
    G = small_generator().requires_grad_(False)
    w = torch.randn(2, 32, requires_grad=True)
    G(w).square().mean().backward()
    assert w.grad is not None and torch.isfinite(w.grad).all() and w.grad.abs().sum() > 0
    ws = torch.randn(2, G.num_ws, 32, requires_grad=True)
    G.synthesis(ws).square().mean().backward()
    assert (ws.grad.abs().sum((0, 2)) > 0).all()  # every style row matters


@pytest.mark.parametrize("space", ["z", "w+"])
def test_gradcheck_on_the_latent(space):
    G = small_generator(space, **TINY).double().requires_grad_(False)
    latent = torch.randn(2, G.latent_dim, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(G, (latent,), eps=1e-6, atol=1e-5)


@pytest.fixture
def exported(tmp_path):
    G = small_generator()
    return G, {k: v.clone() for k, v in G.state_dict().items()}, tmp_path


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_round_trip_loads_strictly_and_frozen(exported, suffix):
    G, state, tmp_path = exported
    path = tmp_path / f"g{suffix}"
    torch.save(state, path) if suffix == ".pt" else save_file(state, path)
    loaded = load_generator(path, "stylegan2", **SMALL)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    for key, value in state.items():
        assert torch.equal(loaded.state_dict()[key], value), key
    w = torch.randn(2, 32)
    with torch.no_grad():
        assert torch.equal(loaded(w), G(w))
    assert load_generator(path, "stylegan2", space="w+", **SMALL).latent_dim == 6 * 32


def test_load_errors_name_the_file_and_the_problem(exported):
    _, state, tmp_path = exported

    def fails(state_or_bytes, match, name="bad.pt", **options):
        path = tmp_path / name
        if isinstance(state_or_bytes, bytes):
            path.write_bytes(state_or_bytes)
        else:
            torch.save(state_or_bytes, path)
        with pytest.raises(GeneratorError, match=match) as info:
            load_generator(path, "stylegan2", **{**SMALL, **options})
        assert name in str(info.value)

    missing = {k: v for k, v in state.items() if k != "synthesis.b8.conv0.noise_const"}
    fails(missing, r"missing keys: .*synthesis\.b8\.conv0\.noise_const")
    fails({**state, "synthesis.b32.const": torch.zeros(1)}, r"unexpected keys: .*synthesis\.b32\.const")
    fails({**state, "mapping.w_avg": torch.zeros(31)}, r"shape mismatch: mapping\.w_avg \(checkpoint \(31,\)")
    fails(state, "missing keys", img_resolution=32)  # weights of another configuration
    fails([1, 2, 3], "no state dict")
    fails(b"not a checkpoint", "cannot read", name="garbage.safetensors")
    fails(b"not a checkpoint", "cannot read", name="garbage.pt")
    fails({**state, "mapping.w_avg": torch.full((32,), math.nan)}, r"non-finite values in mapping\.w_avg")
    with pytest.raises(GeneratorError, match="not found: .*absent.pt"):
        load_generator(tmp_path / "absent.pt", "stylegan2")
    with pytest.raises(GeneratorError, match="needs a weight file"):
        load_generator(None, "stylegan2")

"""DFM (dfm.model): the training objective and the sampling pipeline, on tiny linear problems."""

from __future__ import annotations

from typing import NamedTuple

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dfm.diffusion import NoiseSchedule
from dfm.forward_models import LinearProjection
from dfm.model import DFM, Denoised, Sample, drop_context
from dfm.networks.linear_inverse import LinearInverseDenoiser
from dfm.tasks.toy import ObservationDataset
from dfm.tasks.toy.problems import GaussianMixtureProblem

D, M = 3, 2  # signal and observation sizes


class Probe(nn.Module):
    """A tiny trainable denoiser that records every call's inputs and output."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.lin = nn.Linear(2 * M + 1, D)
        self.calls: list[dict] = []

    def forward(self, ctxt_obs, ctxt_params, noisy_obs, t, trgt_params):
        signal = self.lin(torch.cat([ctxt_obs, noisy_obs, t[:, None] / 1000], -1))
        self.calls.append({"ctxt": ctxt_obs.clone(), "noisy": noisy_obs.clone(), "t": t.clone(), "signal": signal})
        return signal


class CountingProjection(LinearProjection):
    def __init__(self):
        super().__init__()
        self.params_seen: list[torch.Tensor] = []

    def forward(self, signal, params):
        self.params_seen.append(params)
        return super().forward(signal, params)


def make_batch(n: int = 16, seed: int = 0, novel: bool = True) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    signal = torch.randn(n, D, generator=g)
    a_c, a_t, a_n = (torch.randn(n, M, D, generator=g) for _ in range(3))
    batch = {
        "ctxt_obs": torch.einsum("bmd,bd->bm", a_c, signal) + 0.05 * torch.randn(n, M, generator=g),
        "ctxt_params": a_c,
        "trgt_obs": torch.einsum("bmd,bd->bm", a_t, signal),
        "trgt_params": a_t,
    }
    if novel:
        batch |= {"novel_obs": torch.einsum("bmd,bd->bm", a_n, signal), "novel_params": a_n}
    return batch


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These models are tiny: on a small shared machine extra intra-op threads only cost time."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -- the objective -----------------------------------------------------------------------------------


def test_forward_returns_target_novel_and_their_sum():
    den = Probe()
    model = DFM(den, LinearProjection(), p_uncond=0.0)
    batch = make_batch()
    losses = model(batch, generator=gen())
    assert set(losses) == {"target", "novel", "loss"}
    assert all(v.ndim == 0 for v in losses.values())
    signal = den.calls[-1]["signal"]
    # recomputed from the signal the denoiser actually produced
    target = F.mse_loss(torch.einsum("bmd,bd->bm", batch["trgt_params"], signal), batch["trgt_obs"])
    novel = F.mse_loss(torch.einsum("bmd,bd->bm", batch["novel_params"], signal), batch["novel_obs"])
    torch.testing.assert_close(losses["target"], target)
    torch.testing.assert_close(losses["novel"], novel)
    torch.testing.assert_close(losses["loss"], target + novel)
    assert losses["target"] != losses["novel"]
    # the noisy target really is q(x_t | x_0) at the sampled t with the generator's noise
    call = den.calls[-1]
    assert not torch.equal(call["noisy"], batch["trgt_obs"])
    assert ((call["t"] >= 0) & (call["t"] <= 999) & (call["t"] == call["t"].round())).all()


class Rendered(NamedTuple):
    observation: torch.Tensor
    norm: torch.Tensor


class RenderingProjection(LinearProjection):
    """A forward model with a typed output: the observation and a by-product; it renders only the
    first observation entry (a "patch")."""

    def forward(self, signal, params):
        obs = super().forward(signal, params)
        return Rendered(obs[:, :1], signal.norm(dim=-1))


def test_forward_models_may_return_a_typed_output_and_render_only_trgt_pixels():
    den = Probe()
    seen = {}

    def regularizer(signal, batch, predictions):
        seen.update(predictions)
        return predictions["target"].norm.mean()

    model = DFM(den, RenderingProjection(), p_uncond=0.0, regularizers={"norm": regularizer})
    batch = make_batch()
    batch["trgt_pixels"] = batch["trgt_obs"][:, :1]
    batch["novel_obs"] = batch["novel_obs"][:, :1]
    losses = model(batch, generator=gen())
    signal = den.calls[-1]["signal"]
    target = torch.einsum("bmd,bd->bm", batch["trgt_params"], signal)[:, :1]
    torch.testing.assert_close(losses["target"], F.mse_loss(target, batch["trgt_pixels"]))
    torch.testing.assert_close(losses["norm"], signal.norm(dim=-1).mean())
    assert set(seen) == {"target", "novel", "denoiser"} and seen["denoiser"] == {}


class WithExtras(Probe):
    """A denoiser that returns a by-product beside its signal."""

    def forward(self, *args):
        signal = super().forward(*args)
        return Denoised(signal, {"double": 2 * signal})


def test_a_denoisers_by_products_reach_the_loss_terms_and_never_the_forward_model_or_the_sampler():
    den = WithExtras()
    model = DFM(den, CountingProjection(), p_uncond=0.0,
                regularizers={"extra": lambda signal, batch, predictions: (predictions["denoiser"]["double"] - 2 * signal).abs().sum()})
    losses = model(make_batch(), generator=gen())
    assert losses["extra"] == 0 and all(isinstance(p, torch.Tensor) for p in model.forward_model.params_seen)
    batch = make_batch()
    sample = model.sample(batch["ctxt_obs"], None, batch["trgt_params"], batch["trgt_obs"].shape, steps=3, generator=gen())
    assert torch.equal(sample.signal, den.calls[-1]["signal"])  # the signal, not the Denoised


def test_weighted_sum_and_missing_novel():
    model = DFM(Probe(), LinearProjection(), loss_weights={"target": 2.0, "novel": 0.25}, p_uncond=0.0)
    losses = model(make_batch(), generator=gen())
    torch.testing.assert_close(losses["loss"], 2.0 * losses["target"] + 0.25 * losses["novel"])
    # a batch without a novel view is refused (the term would vanish silently) unless its weight is 0
    with pytest.raises(ValueError, match=r"no 'novel_obs', 'novel_params' \(the novel-view term.*'novel': 0.0.*keys: \['ctxt_obs'"):
        model(make_batch(novel=False), generator=gen())
    without = DFM(Probe(), LinearProjection(), loss_weights={"target": 2.0, "novel": 0.0}, p_uncond=0.0)(make_batch(novel=False), gen())
    assert set(without) == {"target", "loss"}
    torch.testing.assert_close(without["loss"], 2.0 * without["target"])


def test_a_misspelled_batch_key_is_named_with_the_keys_there_are():
    batch = make_batch()
    batch["trgt_ob"] = batch.pop("trgt_obs")
    with pytest.raises(ValueError, match=r"no 'trgt_obs' \(did you mean 'trgt_ob'\?\); its keys: \['ctxt_obs', 'ctxt_params', 'novel_obs'"):
        DFM(Probe(), LinearProjection())(batch, gen())


def test_a_forward_model_output_that_would_broadcast_is_refused():
    class Column(LinearProjection):
        def forward(self, signal, params):
            return super().forward(signal, params)[..., None]  # (B, M, 1) for (B, M) targets

    with pytest.raises(ValueError, match=r"forward_model\(signal, trgt_params\) returned \(16, 2, 1\), but trgt_obs is \(16, 2\)"):
        DFM(Probe(), Column())(make_batch(), gen())


def test_sampling_refuses_a_context_batch_that_does_not_match_the_shape():
    batch = make_batch(n=4)
    with pytest.raises(ValueError, match="ctxt_obs holds 4 contexts but shape asks for 8 samples; repeat"):
        DFM(Probe(), LinearProjection()).sample(batch["ctxt_obs"], batch["ctxt_params"], batch["trgt_params"], (8, M))


def test_zero_novel_weight_drops_the_term():
    fm = CountingProjection()
    batch = make_batch()
    model = DFM(Probe(), fm, loss_weights={"novel": 0}, p_uncond=0.0)
    losses = model(batch, generator=gen())
    assert set(losses) == {"target", "loss"}
    torch.testing.assert_close(losses["loss"], losses["target"])
    assert len(fm.params_seen) == 1 and fm.params_seen[0] is batch["trgt_params"]  # novel view never rendered


def test_unknown_loss_weight_raises_listing_valid_terms():
    with pytest.raises(ValueError, match="nvel") as err:
        DFM(Probe(), LinearProjection(), loss_weights={"nvel": 0.0}, regularizers={"smooth": lambda s, b, p: s.sum()})
    message = str(err.value)
    assert all(term in message for term in ("'target'", "'novel'", "'smooth'"))


def test_regularizer_called_with_signal_batch_predictions_and_weighted():
    seen = []

    def reg(signal, batch, predictions):
        seen.append((signal, batch, dict(predictions)))
        return signal.square().mean()

    den = Probe()
    batch = make_batch()
    model = DFM(den, LinearProjection(), regularizers={"smooth": reg}, loss_weights={"smooth": 3.0}, p_uncond=0.0)
    losses = model(batch, generator=gen())
    assert len(seen) == 1
    signal, got_batch, predictions = seen[0]
    assert signal is den.calls[-1]["signal"]
    assert got_batch["trgt_obs"] is batch["trgt_obs"] and got_batch["novel_params"] is batch["novel_params"]
    assert set(predictions) == {"target", "novel", "denoiser"}
    torch.testing.assert_close(predictions["target"], torch.einsum("bmd,bd->bm", batch["trgt_params"], signal))
    torch.testing.assert_close(predictions["novel"], torch.einsum("bmd,bd->bm", batch["novel_params"], signal))
    torch.testing.assert_close(losses["smooth"], signal.square().mean())
    torch.testing.assert_close(losses["loss"], losses["target"] + losses["novel"] + 3.0 * losses["smooth"])
    losses["loss"].backward()  # the regulariser is part of the graph
    assert den.lin.weight.grad is not None


def test_regularizer_default_weight_is_one_and_zero_skips_it():
    calls = []

    def reg(signal, batch, predictions):
        calls.append(1)
        return torch.tensor(5.0)

    default = DFM(Probe(), LinearProjection(), regularizers={"r": reg}, p_uncond=0.0)(make_batch(), generator=gen())
    torch.testing.assert_close(default["loss"], default["target"] + default["novel"] + 5.0)
    off = DFM(Probe(), LinearProjection(), regularizers={"r": reg}, loss_weights={"r": 0.0}, p_uncond=0.0)
    losses = off(make_batch(), generator=gen())
    assert "r" not in losses and len(calls) == 1


def zeroed_rows(ctxt: torch.Tensor) -> torch.Tensor:
    return (ctxt == 0).all(dim=-1)


def test_context_is_dropped_per_sample():
    den = Probe()
    model = DFM(den, LinearProjection(), p_uncond=0.5)
    batch = make_batch(n=4000)
    model(batch, generator=gen(1))
    ctxt = den.calls[-1]["ctxt"]
    dropped = zeroed_rows(ctxt)
    assert 0.45 < dropped.float().mean().item() < 0.55
    torch.testing.assert_close(ctxt[~dropped], batch["ctxt_obs"][~dropped])  # the rest are untouched
    assert not zeroed_rows(batch["ctxt_obs"]).any()

    # small batches: each one mixes dropped and kept rows rather than dropping all or none
    mixed = 0
    g = gen(2)
    for seed in range(20):
        model(make_batch(n=8, seed=seed), generator=g)
        rows = zeroed_rows(den.calls[-1]["ctxt"])
        mixed += bool(rows.any() and not rows.all())
    assert mixed >= 15

    # the mask is a function of the generator
    model(batch, generator=gen(1))
    assert torch.equal(zeroed_rows(den.calls[-1]["ctxt"]), dropped)


def test_no_context_dropping_with_p_uncond_zero():
    den = Probe()
    model = DFM(den, LinearProjection(), p_uncond=0.0)
    for seed in range(5):
        batch = make_batch(n=500, seed=seed)
        model(batch, generator=gen(seed))
        assert torch.equal(den.calls[-1]["ctxt"], batch["ctxt_obs"])


def test_drop_context_helper():
    ctxt = torch.randn(4, 2, 3) + 5
    out = drop_context(ctxt, torch.tensor([True, False, True, False]))
    assert torch.equal(out[0], ctxt[0]) and torch.equal(out[2], ctxt[2])
    assert (out[1] == 0).all() and (out[3] == 0).all()


def test_batch_is_not_mutated():
    batch = make_batch()
    before = {k: v.clone() for k, v in batch.items()}
    ids = {k: id(v) for k, v in batch.items()}
    model = DFM(Probe(), LinearProjection(), p_uncond=0.9, regularizers={"r": lambda s, b, p: s.mean()})
    model(batch, generator=gen())
    assert set(batch) == set(before) and {k: id(v) for k, v in batch.items()} == ids
    for k in before:
        assert torch.equal(batch[k], before[k]), k


# -- deterministic baseline --------------------------------------------------------------------------


def test_deterministic_trains_at_last_step_with_zero_target_and_samples_once():
    den = Probe()
    model = DFM(den, LinearProjection(), deterministic=True, p_uncond=0.0)
    batch = make_batch()
    losses = model(batch, generator=gen())
    call = den.calls[-1]
    assert (call["t"] == 999).all() and torch.count_nonzero(call["noisy"]) == 0
    assert {"target", "novel", "loss"} == set(losses)

    den.calls.clear()
    steps_seen = []
    out = model.sample(batch["ctxt_obs"], batch["ctxt_params"], batch["trgt_params"], (16, M), steps=10,
                       generator=gen(), callback=steps_seen.append)
    assert len(den.calls) == 1 and not steps_seen
    call = den.calls[0]
    assert (call["t"] == 999).all() and torch.count_nonzero(call["noisy"]) == 0
    assert isinstance(out, Sample)
    torch.testing.assert_close(out.signal, call["signal"])
    torch.testing.assert_close(out.observation, torch.einsum("bmd,bd->bm", batch["trgt_params"], call["signal"]))
    # a regressor is a function of the context: no randomness in sampling
    again = model.sample(batch["ctxt_obs"], batch["ctxt_params"], batch["trgt_params"], (16, M), generator=gen(9))
    torch.testing.assert_close(again.signal, out.signal)


# -- sampling ----------------------------------------------------------------------------------------


def sample(model, batch, seed=0, **kwargs):
    n = batch["trgt_obs"].shape[0]
    kwargs.setdefault("steps", 5)
    return model.sample(batch["ctxt_obs"], batch["ctxt_params"], batch["trgt_params"], (n, M), generator=gen(seed), **kwargs)


@pytest.mark.parametrize("sampler, options", [("ddim", {}), ("ddim", {"eta": 1.0}), ("dpmpp_2m", {}), ("dpmpp_2m", {"eta": 1.0})])
def test_sample_is_reproducible_per_seed(sampler, options):
    model = DFM(Probe(), LinearProjection())
    batch = make_batch()
    a = sample(model, batch, 0, sampler=sampler, **options)
    b = sample(model, batch, 0, sampler=sampler, **options)
    c = sample(model, batch, 1, sampler=sampler, **options)
    assert torch.equal(a.observation, b.observation) and torch.equal(a.signal, b.signal)
    assert not torch.allclose(a.observation, c.observation)
    assert not torch.allclose(a.signal, c.signal)


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m"])
@pytest.mark.parametrize("spacing", ["uniform", "karras"])
def test_sample_returns_observation_of_its_signal(sampler, spacing):
    den = Probe()
    model = DFM(den, LinearProjection())
    batch = make_batch()
    out = sample(model, batch, sampler=sampler, spacing=spacing, steps=6)
    assert isinstance(out, Sample) and out.observation.shape == (16, M) and out.signal.shape == (16, D)
    assert len(den.calls) == 6  # one evaluation per step (no guidance)
    torch.testing.assert_close(out.signal, den.calls[-1]["signal"])  # the last step's signal
    torch.testing.assert_close(out.observation, torch.einsum("bmd,bd->bm", batch["trgt_params"], out.signal))
    assert not out.signal.requires_grad  # sampling runs without autograd


class CondUncond(nn.Module):
    """Outputs one known signal when the context is present and another when it is zeroed."""

    def __init__(self):
        super().__init__()
        self.register_buffer("cond", torch.tensor([1.0, -2.0, 0.5]))
        self.register_buffer("uncond", torch.tensor([0.3, 0.4, -1.0]))
        self.calls = 0

    def forward(self, ctxt_obs, ctxt_params, noisy_obs, t, trgt_params):
        self.calls += 1
        present = (ctxt_obs != 0).any(-1, keepdim=True)
        # depend on x_t a little so that the sampler's path matters
        return torch.where(present, self.cond, self.uncond) + 0.01 * noisy_obs.sum(-1, keepdim=True)


@pytest.mark.parametrize("guidance", [1.0, 0.0, 3.0])
def test_guidance_combines_conditional_and_unconditional_x0(guidance):
    den = CondUncond()
    model = DFM(den, LinearProjection())
    batch = make_batch(n=8)
    a_t = batch["trgt_params"]
    steps = []

    def callback(d):
        steps.append(d)

    x_in = []
    original = den.forward

    def spy(ctxt_obs, ctxt_params, noisy_obs, t, trgt_params):
        x_in.append(noisy_obs.clone())
        return original(ctxt_obs, ctxt_params, noisy_obs, t, trgt_params)

    den.forward = spy
    out = sample(model, batch, steps=4, guidance=guidance, callback=callback)
    assert len(steps) == 4
    assert den.calls == (4 if guidance == 1.0 else 8)  # guidance costs a second, unconditional evaluation
    for i, d in enumerate(steps):
        x = x_in[i * (1 if guidance == 1.0 else 2)]
        shift = 0.01 * x.sum(-1, keepdim=True)
        x0_c = torch.einsum("bmd,bd->bm", a_t, den.cond + shift)
        x0_u = torch.einsum("bmd,bd->bm", a_t, den.uncond + shift)
        torch.testing.assert_close(d["denoised"], x0_u + guidance * (x0_c - x0_u))
    # the returned signal is the conditional one of the last step
    last_x = x_in[-1 if guidance == 1.0 else -2]
    torch.testing.assert_close(out.signal, den.cond + 0.01 * last_x.sum(-1, keepdim=True))


def test_temperature_scales_the_initial_noise():
    batch = make_batch()
    firsts = {}
    for temp in (1.0, 0.5):
        den = Probe()
        model = DFM(den, LinearProjection())
        xs = []
        sample(model, batch, seed=3, temperature=temp, steps=5, callback=lambda d: xs.append(d["x"]))
        firsts[temp] = (den.calls[0]["noisy"], xs[0])
    expected = torch.randn(16, M, generator=gen(3))
    torch.testing.assert_close(firsts[1.0][0], expected)  # x_T is the generator's first draw
    torch.testing.assert_close(firsts[0.5][0], 0.5 * expected)
    assert not torch.allclose(firsts[0.5][1], firsts[1.0][1])  # and the trajectory differs from there


def test_temperature_visible_in_callback_for_a_zero_denoiser():
    """With x0 = 0, a DDIM step only rescales x_t, so the first step's x is proportional to the temperature."""

    class Zero(nn.Module):
        def forward(self, ctxt_obs, ctxt_params, noisy_obs, t, trgt_params):
            return torch.zeros(noisy_obs.shape[0], D)

    model = DFM(Zero(), LinearProjection())
    batch = make_batch()
    xs = {}
    for temp in (1.0, 0.25):
        got = []
        sample(model, batch, seed=5, temperature=temp, steps=5, callback=lambda d: got.append(d["x"]))
        xs[temp] = got[0]
    assert xs[1.0].abs().max() > 1e-3
    torch.testing.assert_close(xs[0.25], 0.25 * xs[1.0])


def test_unknown_sampler_raises():
    model = DFM(Probe(), LinearProjection())
    with pytest.raises(ValueError, match=r"unknown sampler 'euler'.*ddim.*dpmpp_2m"):
        sample(model, make_batch(), sampler="euler")


def test_sampler_options_are_passed_through():
    model = DFM(Probe(), LinearProjection())
    batch = make_batch()
    for sampler in ("ddim", "dpmpp_2m"):
        a = sample(model, batch, 0, sampler=sampler, eta=0.0)
        b = sample(model, batch, 0, sampler=sampler, eta=1.0)
        assert not torch.allclose(a.observation, b.observation)
    with pytest.raises(TypeError):
        sample(model, batch, 0, sampler="dpmpp_2m", churn=1.0)  # no sampler has this option


# -- learning ----------------------------------------------------------------------------------------


def test_loss_falls_on_the_gmm_toy_problem():
    torch.manual_seed(0)
    problem = GaussianMixtureProblem(seed=0)
    data = ObservationDataset(problem, 4096, seed=0)
    schedule = NoiseSchedule()
    denoiser = LinearInverseDenoiser(
        problem.signal_dim, problem.obs_dim, schedule, context_std=problem.context_noise, width=32, depth=1
    )
    model = DFM(denoiser, LinearProjection(), schedule)
    held = data.__getitems__(list(range(2048)))

    def held_out_loss() -> float:
        with torch.no_grad():  # same t, noise and context drops both times
            return model(held, generator=gen(123))["loss"].item()

    before = held_out_loss()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = gen(0)
    for step in range(100):
        idx = torch.randint(0, len(data), (128,), generator=g).tolist()
        loss = model(data.__getitems__(idx), generator=g)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = held_out_loss()
    assert after < 0.85 * before, (before, after)


# -- self-conditioning -------------------------------------------------------------------------------


class SelfConditioned(Probe):
    """A probe that also reads, and records, its previous estimate of the target observation."""

    def __init__(self, seed: int = 0):
        super().__init__(seed)
        self.lin = nn.Linear(3 * M + 1, D)

    def forward(self, ctxt_obs, ctxt_params, noisy_obs, t, trgt_params, previous):
        signal = self.lin(torch.cat([ctxt_obs, noisy_obs, previous, t[:, None] / 1000], -1))
        self.calls.append({"noisy": noisy_obs.clone(), "previous": previous.clone(), "signal": signal.detach()})
        return signal


@pytest.mark.parametrize("share", [0.5, 1.0])
def test_self_conditioning_feeds_a_first_gradient_free_estimate_to_a_share_of_the_samples(share):
    den = SelfConditioned()
    model = DFM(den, LinearProjection(), p_uncond=0.0, self_condition=share)
    batch = make_batch(n=64)
    losses = model(batch, gen(1))
    first, second = den.calls  # a first pass, then the one the loss differentiates
    assert torch.equal(first["previous"], torch.zeros(64, M)) and torch.equal(first["noisy"], second["noisy"])
    estimate = torch.einsum("bmd,bd->bm", batch["trgt_params"], first["signal"])
    used = (second["previous"] != 0).any(-1)
    torch.testing.assert_close(second["previous"][used], estimate[used])  # the rendered first estimate, or zeros
    assert abs(used.float().mean().item() - share) < 0.2
    losses["loss"].backward()  # the first pass is outside the graph: only the second gets gradients
    assert den.lin.weight.grad is not None and not first["signal"].requires_grad


def test_self_conditioning_skips_the_first_pass_when_no_sample_uses_it():
    den = SelfConditioned()
    DFM(den, LinearProjection(), p_uncond=0.0, self_condition=1e-9)(make_batch(), gen())
    assert len(den.calls) == 1 and torch.equal(den.calls[0]["previous"], torch.zeros(16, M))


def test_self_conditioning_while_sampling_gives_each_step_the_previous_clean_estimate():
    den = SelfConditioned()
    model = DFM(den, LinearProjection(), self_condition=0.5)
    batch = make_batch(n=8)
    seen = []
    out = sample(model, batch, steps=4, callback=lambda d: seen.append(d["denoised"]))
    assert torch.equal(den.calls[0]["previous"], torch.zeros(8, M))
    for call, estimate in zip(den.calls[1:], seen[:-1]):
        torch.testing.assert_close(call["previous"], estimate)
    torch.testing.assert_close(out.observation, seen[-1])
    # under guidance each branch gets its own previous estimate (conditional, unconditional, conditional, ...)
    den.calls.clear()
    sample(model, batch, steps=3, guidance=2.0)
    assert [c["previous"].abs().sum().item() == 0 for c in den.calls] == [True, True, False, False, False, False]
    assert not torch.allclose(den.calls[2]["previous"], den.calls[3]["previous"])


def test_self_conditioning_needs_a_denoiser_that_takes_previous_and_a_whole_target():
    with pytest.raises(ValueError, match="keyword `previous`.*Probe"):
        DFM(Probe(), LinearProjection(), self_condition=0.5)
    with pytest.raises(ValueError, match=r"self_condition must be in \[0, 1\]"):
        DFM(SelfConditioned(), LinearProjection(), self_condition=1.5)

    class Half(LinearProjection):
        def forward(self, signal, params):
            return super().forward(signal, params)[:, :1]

    model = DFM(SelfConditioned(), Half(), p_uncond=0.0, self_condition=1.0)
    batch = make_batch()
    batch["trgt_pixels"] = batch["trgt_obs"][:, :1]
    with pytest.raises(ValueError, match=r"renders \(16, 1\) for a target of \(16, 2\)"):
        model(batch, gen())

"""The diffusion prior's variational bound and sampler."""

from __future__ import annotations

import math

import pytest
import torch

from scarkids.module.diffusion import COSINE_MAX_BETA, DiffusionPrior, make_beta_schedule


def optimal_eps(prior: DiffusionPrior, z_t, t, m: float, s: float):
    """E[eps | z_t] when z0 ~ N(m, s^2 I): the best possible noise predictor."""
    abar = prior.abar[t - 1][:, None].double()
    var_t = abar * s**2 + 1 - abar
    return (1 - abar).sqrt() * (z_t - abar.sqrt() * m) / var_t


def exact_negative_bound(prior: DiffusionPrior, z0, m, s, n_noise=64, generator=None):
    """Sum over every t of the bound terms (no t sampling), averaged over eps draws."""
    n, d = z0.shape
    T = prior.n_steps
    total = torch.zeros(n, dtype=torch.float64)
    w = prior.vlb_weight.double()
    for _ in range(n_noise):
        eps = torch.randn(n, d, dtype=torch.float64, generator=generator)
        for t0 in range(1, T + 1):
            t = torch.full((n,), t0)
            abar = prior.abar[t0 - 1].double()
            z_t = abar.sqrt() * z0 + (1 - abar).sqrt() * eps
            err = (eps - optimal_eps(prior, z_t, t, m, s)).pow(2).sum(-1)
            total += w[t0 - 1] * err / n_noise
    a = float(prior.abar[-1])
    terminal = 0.5 * (a * z0.pow(2) - a - math.log1p(-a)).sum(-1)
    return total + terminal + prior.t1_constant + prior.variance_constant


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_bound_matches_gaussian_nll_with_optimal_predictor(schedule):
    d, m, s = 4, 0.5, 1.3
    prior = DiffusionPrior(d, 1, n_steps=400, beta_schedule=schedule)
    g = torch.Generator().manual_seed(0)
    z0 = m + s * torch.randn(256, d, dtype=torch.float64, generator=g)
    bound = exact_negative_bound(prior, z0, m, s, n_noise=4, generator=g).mean().item()
    nll = (
        (0.5 * ((z0 - m) / s).pow(2) + math.log(s) + 0.5 * math.log(2 * math.pi))
        .sum(-1)
        .mean()
        .item()
    )
    assert bound >= nll - 0.02 * abs(nll)  # a bound (up to Monte Carlo noise)
    assert abs(bound - nll) <= 0.02 * abs(nll), (bound, nll)


def test_sampled_estimator_is_unbiased():
    """The one-t-per-cell estimator (uniform and importance-sampled) averages to the full sum."""
    d, m, s = 3, -0.2, 0.8
    prior = DiffusionPrior(d, 1, n_steps=100)
    g = torch.Generator().manual_seed(1)
    z0 = (m + s * torch.randn(1, d, dtype=torch.float64, generator=g)).expand(20000, d)
    exact = exact_negative_bound(prior, z0[:1], m, s, n_noise=200, generator=g).item()
    for importance in (False, True):
        t, scale = prior.sample_steps(z0.shape[0], importance=importance, generator=g)
        eps = torch.randn(z0.shape, dtype=torch.float64, generator=g)
        abar = prior.abar[t - 1][:, None].double()
        z_t = abar.sqrt() * z0 + (1 - abar).sqrt() * eps
        err = (eps - optimal_eps(prior, z_t, t, m, s)).pow(2).sum(-1)
        a = float(prior.abar[-1])
        terminal = 0.5 * (a * z0.pow(2) - a - math.log1p(-a)).sum(-1)
        estimate = (
            (scale.double() * err + terminal + prior.t1_constant + prior.variance_constant)
            .mean()
            .item()
        )
        assert estimate == pytest.approx(exact, abs=0.05 * abs(exact) + 0.1)


def test_negative_bound_uses_the_noise_net_and_reports_terms():
    prior = DiffusionPrior(5, 3, n_steps=50)
    z0 = torch.randn(8, 5, requires_grad=True)
    t, scale = prior.sample_steps(8)
    out = prior.negative_bound(
        z0, torch.arange(8) % 4, t, scale, torch.randn(8, 5), detach_net=True
    )
    assert out["nll"].shape == (8,) and torch.isfinite(out["nll"]).all()
    out["nll"].sum().backward()
    assert z0.grad is not None and z0.grad.abs().sum() > 0
    assert all(p.grad is None for p in prior.parameters())  # detached: the prior is not trained


@pytest.mark.parametrize("schedule", ["linear", "cosine", "quadratic"])
def test_schedules_keep_last_beta_well_below_one(schedule):
    betas = make_beta_schedule(schedule, 400)
    assert betas.shape == (400,) and (betas > 0).all()
    assert betas.max() <= max(COSINE_MAX_BETA, 0.02) + 1e-12
    prior = DiffusionPrior(2, 1, n_steps=400, beta_schedule=schedule)
    assert prior.vlb_weight.max() <= 0.501  # 1 / (2 alpha_1)


def test_refinement_is_seeded_and_stays_finite():
    prior = DiffusionPrior(4, 2, n_steps=100)
    z = torch.randn(16, 4)
    lab = torch.ones(16, dtype=torch.long)
    a = prior.refine(z, lab, 30, generator=torch.Generator().manual_seed(3))
    b = prior.refine(z, lab, 30, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and torch.isfinite(a).all()
    assert prior.sample(lab, generator=torch.Generator().manual_seed(0)).shape == (16, 4)

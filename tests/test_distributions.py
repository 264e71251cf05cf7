"""The count likelihoods agree with an independent (scipy) computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.special import expit, logsumexp

from scarkids.distributions.counts import negative_binomial_log_prob, zinb_log_prob


def scipy_zinb_logpmf(x, mu, theta, pi):
    nb = stats.nbinom.logpmf(x, n=theta, p=theta / (theta + mu))
    nonzero = np.log1p(-pi) + nb
    zero = logsumexp(np.stack([np.log(pi), nonzero]), axis=0)
    return np.where(x == 0, zero, nonzero)


@pytest.fixture
def random_inputs():
    rng = np.random.default_rng(0)
    n = 4000
    mu = np.exp(rng.uniform(np.log(1e-3), np.log(1e4), n))
    theta = np.exp(rng.uniform(np.log(1e-4), np.log(1e6), n))
    logits = rng.normal(0, 3, n)
    # zeros, small counts, counts near the mean and very large counts
    x = np.concatenate(
        [
            np.zeros(n // 4),
            rng.integers(1, 10, n // 4),
            rng.poisson(mu[: n // 4]),
            rng.integers(1e4, 1e6, n // 4),
        ]
    ).astype(np.float64)
    return x, mu, theta, logits


def test_zinb_matches_scipy(random_inputs):
    x, mu, theta, logits = random_inputs
    ours = zinb_log_prob(
        torch.tensor(x), torch.tensor(np.log(mu)), torch.tensor(np.log(theta)), torch.tensor(logits)
    ).numpy()
    expected = scipy_zinb_logpmf(x, mu, theta, expit(logits))
    ok = np.isfinite(expected)  # scipy itself underflows to -inf for absurd x/mu pairs
    assert ok.mean() > 0.9
    np.testing.assert_allclose(ours[ok], expected[ok], rtol=1e-5, atol=1e-5)


def test_nb_matches_scipy(random_inputs):
    x, mu, theta, _ = random_inputs
    ours = negative_binomial_log_prob(
        torch.tensor(x), torch.tensor(np.log(mu)), torch.tensor(np.log(theta))
    ).numpy()
    expected = stats.nbinom.logpmf(x, n=theta, p=theta / (theta + mu))
    ok = np.isfinite(expected)
    np.testing.assert_allclose(ours[ok], expected[ok], rtol=1e-5, atol=1e-5)


def test_zinb_finite_in_float32_for_huge_counts():
    x = torch.tensor([0.0, 1.0, 1e3, 1e5, 1e6] * 3, dtype=torch.float32)
    log_mu = torch.tensor([np.log(1e-3)] * 5 + [0.0] * 5 + [np.log(1e6)] * 5, dtype=torch.float32)
    for log_theta in (np.log(1e-4), 0.0, np.log(1e6)):
        lp = zinb_log_prob(x, log_mu, torch.full_like(x, log_theta), torch.full_like(x, -2.0))
        assert torch.isfinite(lp).all(), (log_theta, lp)
        assert (lp <= 0).all()


def test_zero_inflation_raises_probability_of_zero():
    x = torch.zeros(3)
    args = (torch.log(torch.tensor([5.0] * 3)), torch.zeros(3))
    low = zinb_log_prob(x, *args, torch.full((3,), -5.0))
    high = zinb_log_prob(x, *args, torch.full((3,), 5.0))
    assert (high > low).all()

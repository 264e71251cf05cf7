"""Count likelihoods: zero-inflated and plain negative binomial, in log space.

Every function takes the mean on the log scale (``log_mu``), which the decoder produces
directly as ``log(library) + log_softmax(...)``: no ``log(mu + eps)`` clamps are needed and
counts up to 1e6 with dispersions from 1e-4 to 1e6 stay finite.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def negative_binomial_log_prob(
    x: torch.Tensor, log_mu: torch.Tensor, log_theta: torch.Tensor
) -> torch.Tensor:
    """Log-density of NB(mean = exp(log_mu), inverse dispersion = exp(log_theta)) at ``x``.

    Shapes broadcast; the result has the broadcast shape (no reduction).
    """
    theta = log_theta.exp()
    log_theta_mu = torch.logaddexp(log_theta, log_mu)  # log(theta + mu), stable
    return (
        theta * (log_theta - log_theta_mu)
        + x * (log_mu - log_theta_mu)
        + torch.lgamma(x + theta)
        - torch.lgamma(theta)
        - torch.lgamma(x + 1.0)
    )


def zinb_log_prob(
    x: torch.Tensor,
    log_mu: torch.Tensor,
    log_theta: torch.Tensor,
    dropout_logits: torch.Tensor,
) -> torch.Tensor:
    """Log-density of a zero-inflated NB at ``x``.

    ``P(x) = pi * 1[x = 0] + (1 - pi) * NB(x; mu, theta)`` with ``pi = sigmoid(dropout_logits)``.
    """
    nb = negative_binomial_log_prob(x, log_mu, log_theta)
    log_one_minus_pi = -F.softplus(dropout_logits)  # log(1 - pi)
    log_pi = dropout_logits + log_one_minus_pi  # log(pi)
    nonzero = log_one_minus_pi + nb
    zero = torch.logaddexp(log_pi, nonzero)
    return torch.where(x < 0.5, zero, nonzero)


def count_log_prob(
    x: torch.Tensor,
    log_mu: torch.Tensor,
    log_theta: torch.Tensor,
    dropout_logits: torch.Tensor | None,
) -> torch.Tensor:
    """ZINB when ``dropout_logits`` is given, NB otherwise."""
    if dropout_logits is None:
        return negative_binomial_log_prob(x, log_mu, log_theta)
    return zinb_log_prob(x, log_mu, log_theta, dropout_logits)

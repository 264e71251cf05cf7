"""Count likelihoods (negative binomial, zero-inflated NB) in log space, and the fused
minibatch likelihood used in training."""

from scarkids.distributions.counts import (
    NonZeros,
    count_log_prob,
    count_log_prob_sum,
    negative_binomial_log_prob,
    softmax_count_log_prob_sum,
    zinb_log_prob,
)

__all__ = [
    "NonZeros",
    "count_log_prob",
    "count_log_prob_sum",
    "negative_binomial_log_prob",
    "softmax_count_log_prob_sum",
    "zinb_log_prob",
]

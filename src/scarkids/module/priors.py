"""Simpler latent priors, the controls of the diffusion prior (``prior="gaussian" | "mixture"``).

Each has the interface the ELBO uses of :class:`scarkids.module.diffusion.DiffusionPrior`:
``negative_bound`` (here the exact ``-log p(z0 | c)``, nats per cell), ``simple_loss`` (what
trains the prior's own parameters in the ``"split"`` mode, on detached codes),
``sample_steps`` and ``extend_labels``; they have no reverse chain, so no refinement.

- :class:`GaussianPrior`: ``z0 ~ N(0, I)`` whatever the cell type (scVI's prior); the
  classifier is still trained as with the diffusion prior.
- :class:`MixturePrior`: ``p(z0 | c) = N(mu_c, diag sigma_c^2)``, learned per cell type (the
  label-tied mixture that scANVI's and MrVI's priors amount to); label index 0 (the null
  label) is a learned Gaussian of its own.
"""

from __future__ import annotations

import math

import torch
from torch import nn

_LOG_2PI = math.log(2 * math.pi)


def _steps_unused(n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Placeholders for the diffusion step and its weight (no random draw)."""
    ones = torch.ones(n, device=device)
    return ones.long(), ones


class GaussianPrior(nn.Module):
    """``z0 ~ N(0, I)`` for every cell type.

    Parameters
    ----------
    n_latent
        Latent dimension d.
    n_labels
        Number of cell types (kept for the interface: the density does not depend on c).
    """

    def __init__(self, n_latent: int, n_labels: int):
        super().__init__()
        self.n_latent = n_latent
        self._n_labels = n_labels
        self.register_buffer("_device_probe", torch.zeros(()), persistent=False)

    @property
    def n_labels(self) -> int:
        return self._n_labels

    def extend_labels(self, n_new: int) -> None:
        """Add ``n_new`` cell types (nothing to learn for them)."""
        self._n_labels += n_new

    def keep_labels(self, n: int) -> None:
        """Keep the first ``n`` cell types.

        Parameters
        ----------
        n
            Number of cell types kept.
        """
        self._n_labels = min(self._n_labels, n)

    def sample_steps(self, n: int, *, importance: bool = False, generator=None):
        """No diffusion steps: placeholders, no random draw."""
        return _steps_unused(n, self._device_probe.device)

    def negative_bound(
        self, z0, label_index, t=None, scale=None, eps=None, *, detach_net=False, every_label=False
    ) -> dict[str, torch.Tensor]:
        """Exact ``-log N(z0; 0, I)`` per row, ``(n,)`` (``(n, C)`` with ``every_label``).

        Parameters
        ----------
        z0
            Latent codes ``(n, d)``.
        label_index
            Label indices (unused: the density does not depend on c).
        t, scale, eps
            Unused (the diffusion prior's estimator inputs).
        detach_net
            Unused (no parameters).
        every_label
            Return ``(n, C)``, one column per label of ``label_index`` (``(C,)``).

        Returns
        -------
        dict
            ``nll`` and ``diffusion_kl`` (zeros: there is no diffusion).
        """
        nll = 0.5 * z0.pow(2).sum(-1) + 0.5 * self.n_latent * _LOG_2PI
        if every_label:
            nll = nll[:, None].expand(-1, label_index.shape[0])
        return {"nll": nll, "diffusion_kl": torch.zeros_like(nll)}

    def simple_loss(self, z0, label_index, *, generator=None) -> torch.Tensor:
        """Nothing to train: zeros ``(n,)``."""
        return torch.zeros(z0.shape[0], device=z0.device, dtype=z0.dtype)

    @torch.no_grad()
    def sample(self, label_index, *, n_steps=None, generator=None, chunk_size=None) -> torch.Tensor:
        """Draw ``(n, d)`` codes from ``N(0, I)`` (``label_index`` (n,) sets n and the
        device; ``n_steps`` and ``chunk_size`` are unused)."""
        shape = (label_index.shape[0], self.n_latent)
        return torch.randn(shape, device=label_index.device, generator=generator)


class MixturePrior(nn.Module):
    """``p(z0 | c) = N(mu_c, diag sigma_c^2)``, one learned Gaussian per cell type.

    Parameters
    ----------
    n_latent
        Latent dimension d.
    n_labels
        Number of cell types C; index 0 of the parameters is the null label, cell type k
        uses index k + 1 (as the diffusion prior's label embedding).
    init_spread
        Standard deviation of the initial means (the variances start at 1).
    """

    def __init__(self, n_latent: int, n_labels: int, *, init_spread: float = 1.0):
        super().__init__()
        self.n_latent = n_latent
        self.init_spread = init_spread
        self.mean = nn.Parameter(torch.randn(n_labels + 1, n_latent) * init_spread)
        self.log_std = nn.Parameter(torch.zeros(n_labels + 1, n_latent))
        with torch.no_grad():
            self.mean[0].zero_()

    @property
    def n_labels(self) -> int:
        return self.mean.shape[0] - 1

    def extend_labels(self, n_new: int) -> None:
        """Append ``n_new`` cell types (new means drawn as at construction)."""
        if n_new <= 0:
            return
        d = self.mean.device
        mean = torch.randn(n_new, self.n_latent, device=d) * self.init_spread
        self.mean = nn.Parameter(torch.cat([self.mean.data, mean]))
        self.log_std = nn.Parameter(
            torch.cat([self.log_std.data, torch.zeros(n_new, self.n_latent, device=d)])
        )

    def keep_labels(self, n: int) -> None:
        """Keep the first ``n`` cell types' Gaussians (and the null label's).

        Parameters
        ----------
        n
            Number of cell types kept.
        """
        self.mean = nn.Parameter(self.mean.data[: n + 1].clone())
        self.log_std = nn.Parameter(self.log_std.data[: n + 1].clone())

    def sample_steps(self, n: int, *, importance: bool = False, generator=None):
        """No diffusion steps: placeholders, no random draw."""
        return _steps_unused(n, self.mean.device)

    def log_prob(
        self, z0: torch.Tensor, label_index: torch.Tensor, *, every_label: bool = False
    ) -> torch.Tensor:
        """``log N(z0; mu_c, diag sigma_c^2)``: ``(n,)``, or ``(n, C)`` with ``every_label``.

        Parameters
        ----------
        z0
            Latent codes ``(n, d)``.
        label_index
            ``(n,)`` parameter indices (0 = null, k + 1 = cell type k), or with
            ``every_label`` ``(C,)`` indices to score every row against.
        every_label
            Score each row against every index of ``label_index``.

        Returns
        -------
        torch.Tensor
            Log-densities in nats.
        """
        return -self._nll(z0, label_index, self.mean, self.log_std, every_label)

    def _nll(self, z0, label_index, mean, log_std, every_label: bool) -> torch.Tensor:
        mu, ls = mean[label_index], log_std[label_index]
        if every_label:  # (n, 1, d) against (1, C, d)
            z0, mu, ls = z0[:, None, :], mu[None], ls[None]
        return (
            0.5 * ((z0 - mu) * torch.exp(-ls)).pow(2).sum(-1)
            + ls.sum(-1)
            + 0.5 * self.n_latent * _LOG_2PI
        )

    def negative_bound(
        self, z0, label_index, t=None, scale=None, eps=None, *, detach_net=False, every_label=False
    ) -> dict[str, torch.Tensor]:
        """Exact ``-log p(z0 | c)`` (the interface of the diffusion bound).

        Parameters
        ----------
        z0
            Latent codes ``(n, d)``.
        label_index
            Parameter indices, as in :meth:`log_prob`.
        t, scale, eps
            Unused (the diffusion prior's estimator inputs).
        detach_net
            Use the means and variances without their gradient (the ``"split"`` mode: the
            encoder sees the prior, the prior is trained by :meth:`simple_loss`).
        every_label
            As in :meth:`log_prob`.

        Returns
        -------
        dict
            ``nll`` (nats) and ``diffusion_kl`` (zeros: there is no diffusion).
        """
        mean, log_std = self.mean, self.log_std
        if detach_net:
            mean, log_std = mean.detach(), log_std.detach()
        nll = self._nll(z0, label_index, mean, log_std, every_label)
        return {"nll": nll, "diffusion_kl": torch.zeros_like(nll)}

    def simple_loss(self, z0, label_index, *, generator=None) -> torch.Tensor:
        """``-log p(z0 | c)`` of (detached) codes, ``(n,)``: maximum likelihood for the
        means and variances (the ``"split"`` mode's prior training)."""
        return self._nll(z0, label_index, self.mean, self.log_std, False)

    @torch.no_grad()
    def sample(self, label_index, *, n_steps=None, generator=None, chunk_size=None) -> torch.Tensor:
        """Draw ``z0 ~ N(mu_c, diag sigma_c^2)``: ``(n, d)`` for ``label_index`` (n,)
        (``n_steps`` and ``chunk_size`` are unused)."""
        noise = torch.randn(
            (label_index.shape[0], self.n_latent), device=label_index.device, generator=generator
        )
        return self.mean[label_index] + self.log_std[label_index].exp() * noise

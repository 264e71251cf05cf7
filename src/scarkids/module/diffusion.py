"""A denoising diffusion (DDPM) prior over the latent space, conditioned on cell type.

Notation (Ho et al. 2020): steps t = 1..T, ``alpha_t = 1 - beta_t``, ``abar_t = prod alpha``.
Forward: ``q(z_t | z_0) = N(sqrt(abar_t) z_0, (1 - abar_t) I)``. Reverse:
``p(z_{t-1} | z_t, c) = N(mu_psi(z_t, t, c), beta_t I)`` with the epsilon parameterisation.
The reverse variance ``beta_t`` (Ho et al.'s "large" choice) is the exact reverse variance when
the codes are N(0, I), which the VAE's latent approximately is, so the bound below is nearly
tight there (with ``beta~_t`` it would stay ~0.2 nats per dimension loose for any T).

The variational bound on ``-log p(z_0 | c)`` (nats, per cell) is

    KL(q(z_T|z_0) || N(0, I))                                  closed form
  + sum_{t>=2} KL(q(z_{t-1}|z_t,z_0) || p(z_{t-1}|z_t,c))
        = w_t ||eps - eps_psi||^2 + d/2 (r_t - 1 - log r_t),   r_t = beta~_t / beta_t
  - log p(z_0 | z_1, c) = w_1 ||eps - eps_psi||^2 + d/2 log(2 pi beta_1)

with ``w_t = beta_t / (2 alpha_t (1 - abar_t))`` (at most 1 / (2 alpha_1) ~ 0.5 for every schedule here). The
sum of the eps terms is estimated without bias from one t per cell (uniform, or importance
sampled with p(t) proportional to w_t); the constants are added exactly.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

BetaSchedule = Literal["linear", "cosine", "quadratic"]

#: Cosine betas are clipped here, not at 0.999 as often done: a last beta near 1 makes the
#: reverse step scale the noise-prediction error by 1/sqrt(alpha) ~ 30.
COSINE_MAX_BETA = 0.5


def make_beta_schedule(
    kind: BetaSchedule, n_steps: int, beta_min: float = 1e-4, beta_max: float = 0.02
) -> torch.Tensor:
    """Return ``beta_1..beta_T`` as a float64 tensor of shape ``(n_steps,)``."""
    if kind == "linear":
        betas = torch.linspace(beta_min, beta_max, n_steps, dtype=torch.float64)
    elif kind == "quadratic":
        betas = torch.linspace(beta_min**0.5, beta_max**0.5, n_steps, dtype=torch.float64) ** 2
    elif kind == "cosine":
        s = 0.008
        steps = torch.arange(n_steps + 1, dtype=torch.float64) / n_steps
        abar = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
        betas = (1 - abar[1:] / abar[:-1]).clamp(min=1e-8, max=COSINE_MAX_BETA)
    else:
        raise ValueError(f"unknown beta schedule {kind!r}")
    return betas


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of integer steps ``t`` (shape ``(n,)``) -> ``(n, dim)``."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(10_000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half
    )
    angles = t.float()[:, None] * freqs[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class NoisePredictor(nn.Module):
    """``eps_psi(z_t, t, c)``: an MLP with additive step and label embeddings.

    Label index 0 is the null label ("unconditional"); cell type k uses index k + 1, so that
    new cell types are appended without moving existing rows.
    """

    def __init__(
        self,
        n_latent: int,
        n_labels: int,
        *,
        hidden_dim: int = 128,
        n_layers: int = 2,
        timestep_embed_dim: int = 64,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.timestep_embed_dim = timestep_embed_dim
        self.input = nn.Linear(n_latent, hidden_dim)
        self.time = nn.Sequential(
            nn.Linear(timestep_embed_dim, hidden_dim), nn.SiLU(), nn.Linear(hidden_dim, hidden_dim)
        )
        self.label = nn.Embedding(n_labels + 1, hidden_dim)
        nn.init.normal_(self.label.weight, std=0.02)
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.LayerNorm(hidden_dim),
                nn.SiLU(),
                nn.Dropout(dropout),
                nn.Linear(hidden_dim, hidden_dim),
            )
            for _ in range(n_layers)
        )
        self.output = nn.Sequential(
            nn.LayerNorm(hidden_dim), nn.SiLU(), nn.Linear(hidden_dim, n_latent)
        )
        nn.init.zeros_(self.output[-1].weight)
        nn.init.zeros_(self.output[-1].bias)

    @property
    def n_labels(self) -> int:
        return self.label.num_embeddings - 1

    def forward(
        self,
        z_t: torch.Tensor,
        t: torch.Tensor,
        label_index: torch.Tensor,
        *,
        every_label: bool = False,
    ) -> torch.Tensor:
        """``z_t`` (n, d), ``t`` (n,) in 1..T, ``label_index`` (n,) with 0 = null -> (n, d).

        With ``every_label``, ``label_index`` is ``(C,)`` and each row is scored against
        every one of those labels: the result is ``(n, C, d)``; the label-free part of the
        network runs once per row instead of once per (row, label).
        """
        h = self.input(z_t) + self.time(timestep_embedding(t, self.timestep_embed_dim))
        if every_label:
            h = (h[:, None, :] + self.label(label_index)[None, :, :]).flatten(0, 1)
        else:
            h = h + self.label(label_index)
        out = self._trunk(h)
        return out.view(z_t.shape[0], -1, out.shape[-1]) if every_label else out

    def _trunk(self, h: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            h = h + block(h)
        return self.output(h)

    def step_rows(self, steps: torch.Tensor) -> torch.Tensor:
        """The step part of the first hidden layer, ``time(embedding(t)) + input.bias``, for
        each step in ``steps`` (k,) -> ``(k, hidden)``: a reverse chain computes all its rows
        at once instead of one small network call per step."""
        return self.time(timestep_embedding(steps, self.timestep_embed_dim)) + self.input.bias

    def at_step(
        self,
        z_t: torch.Tensor,
        step: int,
        label_h: torch.Tensor | None,
        step_row: torch.Tensor | None = None,
        *,
        label_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``eps_psi(z_t, step, c)`` with one step for every row and the label embedding
        ``label_h = self.label(label_index)`` (n, hidden) computed once by the caller: the
        reverse chains' form, where the step embedding is one row, not n. Without autograd
        and in eval mode the residual blocks run in place (no ``(n, hidden)`` temporaries
        beyond one per block).

        Parameters
        ----------
        z_t
            ``(n, d)`` codes at ``step``.
        step
            The diffusion step, 1..T, shared by every row.
        label_h
            ``(n, hidden)`` label embeddings of the rows, or ``None`` with ``label_index``.
        step_row
            ``step_rows`` of this step, ``(hidden,)``; ``None`` computes it.
        label_index
            ``(n,)`` label indices whose embeddings are looked up here instead of
            ``label_h`` (a chunk of a chain: no ``(n, hidden)`` embeddings kept per step).

        Returns
        -------
        torch.Tensor
            ``(n, d)`` predicted noise (equal to :meth:`forward` with ``t`` filled with
            ``step``).
        """
        if step_row is None:
            t = torch.full((1,), step, device=z_t.device, dtype=torch.long)
            step_row = self.step_rows(t)[0]
        if label_index is not None:  # gathered into a new tensor: add in place
            h = self.label(label_index).add_(step_row).addmm_(z_t, self.input.weight.t())
        else:
            h = torch.add(label_h, step_row).addmm_(z_t, self.input.weight.t())
        if torch.is_grad_enabled() or self.training:
            return self._trunk(h)
        for block in self.blocks:  # LayerNorm, SiLU, Dropout (identity in eval), Linear
            norm, linear = block[0], block[3]
            a = F.silu(F.layer_norm(h, norm.normalized_shape, norm.weight, norm.bias, norm.eps))
            h.add_(linear.bias).addmm_(a, linear.weight.t())
        norm, linear = self.output[0], self.output[2]
        a = F.silu(F.layer_norm(h, norm.normalized_shape, norm.weight, norm.bias, norm.eps))
        return torch.addmm(linear.bias, a, linear.weight.t())


class DiffusionPrior(nn.Module):
    """``p_psi(z_0 | c)``: the latent DDPM prior, its variational bound, and its sampler.

    Label index 0 of the noise network is the null label; cell type k is index k + 1.

    Parameters
    ----------
    n_latent
        Latent dimension d.
    n_labels
        Number of cell types (the noise network has one more label, the null label).
    n_steps
        Number of diffusion steps T.
    beta_schedule
        ``"linear"``, ``"quadratic"`` or ``"cosine"`` (see :func:`make_beta_schedule`).
    beta_min, beta_max
        First and last ``beta_t`` of the linear and quadratic schedules (unused by
        ``"cosine"``).
    hidden_dim
        Width of the noise network ``eps_psi``.
    n_layers
        Number of residual blocks of the noise network.
    timestep_embed_dim
        Size of the sinusoidal step embedding (even).
    dropout
        Dropout rate in the noise network's blocks.
    """

    def __init__(
        self,
        n_latent: int,
        n_labels: int,
        *,
        n_steps: int = 400,
        beta_schedule: BetaSchedule = "linear",
        beta_min: float = 1e-4,
        beta_max: float = 0.02,
        hidden_dim: int = 128,
        n_layers: int = 2,
        timestep_embed_dim: int = 64,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.n_latent = n_latent
        self.n_steps = n_steps
        self.net = NoisePredictor(
            n_latent,
            n_labels,
            hidden_dim=hidden_dim,
            n_layers=n_layers,
            timestep_embed_dim=timestep_embed_dim,
            dropout=dropout,
        )
        betas = make_beta_schedule(beta_schedule, n_steps, beta_min, beta_max)
        alphas = 1.0 - betas
        abar = torch.cumprod(alphas, 0)
        abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
        weights = betas / (2 * alphas * (1 - abar))
        ratio = ((1 - abar_prev) / (1 - abar))[1:]  # beta~_t / beta_t for t >= 2
        # index 0 of every buffer is step t = 1
        for name, value in {
            "betas": betas,
            "alphas": alphas,
            "abar": abar,
            "vlb_weight": weights,
        }.items():
            self.register_buffer(name, value.float(), persistent=False)
        self.t1_constant = 0.5 * n_latent * math.log(2 * math.pi * float(betas[0]))
        self.variance_constant = float(0.5 * n_latent * (ratio - 1 - ratio.log()).sum())
        self.terminal_abar = float(abar[-1])

    @property
    def n_labels(self) -> int:
        return self.net.n_labels

    def extend_labels(self, n_new: int) -> None:
        """Append ``n_new`` cell types to the noise network's label embedding.

        Parameters
        ----------
        n_new
            Number of cell types to add.
        """
        if n_new > 0:
            self.net.label = extend_embedding(self.net.label, n_new)

    def keep_labels(self, n: int) -> None:
        """Keep the first ``n`` cell types' label embeddings (and the null label's).

        Parameters
        ----------
        n
            Number of cell types kept; as many or more keeps every one.
        """
        old = self.net.label.weight.data
        if n + 1 < old.shape[0]:
            self.net.label = nn.Embedding(n + 1, old.shape[1]).to(old.device, old.dtype)
            self.net.label.weight.data.copy_(old[: n + 1])

    # ------------------------------------------------------------------ bound
    def sample_steps(
        self, n: int, *, importance: bool = False, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw steps ``t`` (n,) in 1..T and the estimator weight ``w_t / p(t)`` (n,).

        Parameters
        ----------
        n
            Number of steps to draw.
        importance
            Draw ``t`` with ``p(t)`` proportional to ``w_t``; ``False``: uniformly.
        generator
            Random number generator (on the buffers' device); ``None`` uses torch's global
            one.

        Returns
        -------
        tuple of torch.Tensor
            ``t`` (``(n,)`` int64, in 1..T) and ``w_t / p(t)`` (``(n,)`` float32).
        """
        device = self.betas.device
        if importance:
            p = self.vlb_weight / self.vlb_weight.sum()
            idx = torch.multinomial(p, n, replacement=True, generator=generator)
            scale = self.vlb_weight[idx] / p[idx]
        else:
            idx = torch.randint(0, self.n_steps, (n,), device=device, generator=generator)
            scale = self.vlb_weight[idx] * self.n_steps
        return idx + 1, scale

    def diffuse(self, z0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Sample ``z_t ~ q(z_t | z_0)`` given the noise ``eps``.

        Parameters
        ----------
        z0
            ``(n, d)`` codes.
        t
            ``(n,)`` int64 steps in 1..T.
        eps
            ``(n, d)`` standard normal noise.

        Returns
        -------
        torch.Tensor
            ``(n, d)``: ``sqrt(abar_t) z0 + sqrt(1 - abar_t) eps``.
        """
        abar = self.abar[t - 1][:, None]
        return abar.sqrt() * z0 + (1 - abar).sqrt() * eps

    def terminal_kl(self, z0: torch.Tensor) -> torch.Tensor:
        """``KL(q(z_T | z_0) || N(0, I))`` per row, closed form. Shape ``(n,)``.

        Parameters
        ----------
        z0
            ``(n, d)`` codes (or any shape whose last axis is d).

        Returns
        -------
        torch.Tensor
            The KL in nats, summed over the last axis: ``(n,)``.
        """
        a = self.terminal_abar
        return 0.5 * (a * z0.pow(2) - a - math.log1p(-a)).sum(-1)

    def negative_bound(
        self,
        z0: torch.Tensor,
        label_index: torch.Tensor,
        t: torch.Tensor,
        scale: torch.Tensor,
        eps: torch.Tensor,
        *,
        detach_net: bool = False,
        every_label: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Unbiased one-sample estimate of the negative diffusion bound on ``-log p(z_0 | c)``.

        Parameters
        ----------
        z0
            Latent codes, ``(n, d)``. Rows may repeat a cell for several labels.
        label_index
            ``(n,)`` noise-net label indices (0 = null, k + 1 = cell type k).
        t, scale
            From :meth:`sample_steps` (``(n,)`` each).
        eps
            Standard normal noise, ``(n, d)``.
        detach_net
            Evaluate the noise net with its parameters detached, so the gradient of the
            bound reaches ``z0`` (the encoder) but not the prior.
        every_label
            ``label_index`` is ``(C,)``: score every cell against each of these labels with
            the same ``(t, eps)``; the outputs are then ``(n, C)``.

        Returns
        -------
        dict with ``nll`` (the bound, ``(n,)``), ``diffusion_kl`` (the T-scaled t >= 2 and
        terminal KL part, ``(n,)``) and ``eps_error`` (``(n,)``, squared error).
        """
        z_t = self.diffuse(z0, t, eps)
        kwargs = {"every_label": every_label}
        if detach_net:
            params = {k: v.detach() for k, v in self.net.named_parameters()}
            eps_hat = torch.func.functional_call(self.net, params, (z_t, t, label_index), kwargs)
        else:
            eps_hat = self.net(z_t, t, label_index, **kwargs)
        if every_label:  # (n, C, d) against (n, 1, d): per (cell, label)
            eps, t, scale = eps[:, None, :], t[:, None], scale[:, None]
            z0 = z0[:, None, :]
        err = (eps - eps_hat).pow(2).sum(-1)
        chain = scale * err
        terminal = self.terminal_kl(z0)
        is_t1 = (t == 1).to(chain.dtype)
        nll = chain + terminal + self.t1_constant + self.variance_constant
        diffusion_kl = chain * (1 - is_t1) + terminal + self.variance_constant
        return {"nll": nll, "diffusion_kl": diffusion_kl, "eps_error": err}

    def simple_loss(
        self,
        z0: torch.Tensor,
        label_index: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Ho et al.'s unweighted ``||eps - eps_psi||^2`` per row, for training the noise net.

        One step ``t`` per row is drawn uniformly, and fresh noise.

        Parameters
        ----------
        z0
            ``(n, d)`` codes (detach them to train the noise network only).
        label_index
            ``(n,)`` noise-network label indices (0 = null, k + 1 = cell type k).
        generator
            Random number generator (on the buffers' device); ``None`` uses torch's global
            one.

        Returns
        -------
        torch.Tensor
            ``(n,)`` squared errors, summed over the latent dimensions.
        """
        t, _ = self.sample_steps(z0.shape[0], generator=generator)
        eps = torch.randn(z0.shape, device=z0.device, generator=generator, dtype=z0.dtype)
        eps_hat = self.net(self.diffuse(z0, t, eps), t, label_index)
        return (eps - eps_hat).pow(2).sum(-1)

    # --------------------------------------------------------------- sampling
    def _chain_eps(self, label_index: torch.Tensor, chunk_size: int | None):
        """``eps(z, step, k)`` of a reverse chain over all rows: the network at step row ``k``
        in chunks of ``chunk_size`` rows (``None``: all at once, the label embeddings made
        once). Every random draw of a chain is made for all its rows at once, so its result
        does not depend on ``chunk_size``; only the network's memory does."""
        n = label_index.shape[0]
        if chunk_size is None or n <= chunk_size:
            label_h = self.net.label(label_index)

            def eps(z, step, row):
                return self.net.at_step(z, step, label_h, row)

            return eps

        def eps_chunked(z, step, row):
            out = torch.empty_like(z)
            for start in range(0, n, chunk_size):
                sl = slice(start, start + chunk_size)
                out[sl] = self.net.at_step(z[sl], step, None, row, label_index=label_index[sl])
            return out

        return eps_chunked

    @torch.no_grad()
    def denoise(
        self,
        z_start: torch.Tensor,
        label_index: torch.Tensor,
        start_step: int,
        *,
        generator: torch.Generator | None = None,
        chunk_size: int | None = None,
    ) -> torch.Tensor:
        """Run the reverse chain from ``z_{start_step}`` down to ``z_0``. No host sync per step.

        The noise added at step t has variance ``beta_t``; the last step returns the mean.

        Parameters
        ----------
        z_start
            ``(n, d)`` codes at step ``start_step``.
        label_index
            ``(n,)`` noise-network label indices to condition on (0 = null, k + 1 = cell
            type k).
        start_step
            Step of ``z_start``, in 1..T.
        generator
            Random number generator of the added noise (on the device of ``z_start``);
            ``None`` uses torch's global one.
        chunk_size
            Rows the noise network runs on at a time (``None``: all); the result does not
            depend on it.

        Returns
        -------
        torch.Tensor
            ``(n, d)`` codes ``z_0``.
        """
        eps = self._chain_eps(label_index, chunk_size)
        steps = torch.arange(1, start_step + 1, device=z_start.device)
        step_rows = self.net.step_rows(steps)  # every step's row in one call
        # the chain's coefficients as Python numbers: no tensor indexing per step
        betas, abar = self.betas[:start_step].double(), self.abar[:start_step].double()
        eps_coef = (betas / (1 - abar).sqrt()).tolist()
        inv_sqrt_alpha = (1 / self.alphas[:start_step].double().sqrt()).tolist()
        noise_sd = betas.sqrt().tolist()
        z = z_start
        for step in range(start_step, 0, -1):
            i = step - 1
            eps_hat = eps(z, step, step_rows[i])
            z = torch.add(z, eps_hat, alpha=-eps_coef[i]).mul_(inv_sqrt_alpha[i])  # the mean
            if step > 1:
                noise = torch.randn(z.shape, device=z.device, generator=generator, dtype=z.dtype)
                z.add_(noise, alpha=noise_sd[i])
        return z

    @torch.no_grad()
    def refine(
        self,
        z0: torch.Tensor,
        label_index: torch.Tensor,
        n_steps: int,
        *,
        n_sampling_steps: int | None = None,
        generator: torch.Generator | None = None,
        chunk_size: int | None = None,
    ) -> torch.Tensor:
        """SDEdit: noise ``z0`` to step ``n_steps`` with q, then denoise with ``p_psi(z | c)``.

        Parameters
        ----------
        z0
            ``(n, d)`` codes to refine.
        label_index
            ``(n,)`` noise-network label indices c (0 = null, k + 1 = cell type k).
        n_steps
            Step the codes are noised to, in 1..T.
        n_sampling_steps
            Reverse steps from ``n_steps`` down to 0: ``None`` or ``n_steps`` runs every
            step (the ancestral chain, :meth:`denoise`); fewer runs the strided ancestral
            sampler over that many evenly spaced steps (:meth:`ddim` with eta = 1), about
            ``n_steps / n_sampling_steps`` times faster.
        generator
            Random number generator of the noise (on the device of ``z0``); ``None`` uses
            torch's global one.
        chunk_size
            Rows the noise network runs on at a time (``None``: all); the result does not
            depend on it.

        Returns
        -------
        torch.Tensor
            ``(n, d)`` refined codes.
        """
        if n_sampling_steps is not None and not 1 <= n_sampling_steps <= n_steps:
            raise ValueError(
                f"n_sampling_steps must be between 1 and n_steps ({n_steps}), got {n_sampling_steps}"
            )
        t = torch.full((z0.shape[0],), n_steps, device=z0.device, dtype=torch.long)
        eps = torch.randn(z0.shape, device=z0.device, generator=generator, dtype=z0.dtype)
        z_t = self.diffuse(z0, t, eps)
        if n_sampling_steps is None or n_sampling_steps == n_steps:
            return self.denoise(
                z_t, label_index, n_steps, generator=generator, chunk_size=chunk_size
            )
        return self.ddim(
            z_t,
            label_index,
            n_sampling_steps,
            start_step=n_steps,
            generator=generator,
            chunk_size=chunk_size,
        )

    @torch.no_grad()
    def sample(
        self,
        label_index: torch.Tensor,
        *,
        n_steps: int | None = None,
        generator: torch.Generator | None = None,
        chunk_size: int | None = None,
    ) -> torch.Tensor:
        """Draw ``z_0 ~ p_psi(z_0 | c)`` for each label in ``label_index`` (n,).

        The chain starts from ``N(0, I)`` at step T. With ``n_steps`` below T it is the
        strided ancestral sampler (DDIM with eta = 1, :meth:`ddim`) over ``n_steps``
        evenly spaced steps: faster, and close to the full chain (``tests/test_generate.py``).

        Parameters
        ----------
        label_index
            ``(n,)`` noise-network label indices (0 = null, k + 1 = cell type k).
        n_steps
            Number of reverse steps, 1 to T; ``None`` or T: the full ancestral chain.
        generator
            Random number generator (on the device of ``label_index``); ``None`` uses
            torch's global one.
        chunk_size
            Rows the noise network runs on at a time (``None``: all); the result does not
            depend on it.

        Returns
        -------
        torch.Tensor
            ``(n, d)`` float32 codes, on the device of ``label_index``.
        """
        if n_steps is not None and not 1 <= n_steps <= self.n_steps:
            raise ValueError(f"n_steps must be between 1 and {self.n_steps}, got {n_steps}")
        z = torch.randn(
            (label_index.shape[0], self.n_latent), device=label_index.device, generator=generator
        )
        if n_steps is None or n_steps == self.n_steps:
            return self.denoise(
                z, label_index, self.n_steps, generator=generator, chunk_size=chunk_size
            )
        return self.ddim(z, label_index, n_steps, generator=generator, chunk_size=chunk_size)

    @torch.no_grad()
    def ddim(
        self,
        z_T: torch.Tensor,
        label_index: torch.Tensor,
        n_steps: int,
        *,
        eta: float = 1.0,
        start_step: int | None = None,
        generator: torch.Generator | None = None,
        chunk_size: int | None = None,
    ) -> torch.Tensor:
        """DDIM (Song et al. 2021) from step T (or ``start_step``) to 0 over ``n_steps``
        evenly strided steps.

        From step t to the next step s < t: ``z_s = sqrt(abar_s) z0_hat +
        sqrt(1 - abar_s - sigma^2) eps_hat + sigma * noise``, with ``sigma^2 = eta^2
        (1 - abar_s) / (1 - abar_t) (1 - abar_t / abar_s)``. ``eta = 1`` is the strided
        ancestral (DDPM) sampler; ``eta = 0`` is deterministic, and with an imperfect noise
        network its samples come out wider than the full chain's.

        Parameters
        ----------
        z_T
            ``(n, d)`` codes at step T (at ``start_step`` when given).
        label_index
            ``(n,)`` noise-network label indices.
        n_steps
            Number of steps, 1 to T (to ``start_step``).
        eta
            Share of the posterior noise added at each step (0 to 1).
        start_step
            Step of ``z_T``, 1 to T; ``None``: T (sampling; a refinement starts lower).
        generator
            Random number generator of the added noise; ``None`` uses torch's global one.
        chunk_size
            Rows the noise network runs on at a time (``None``: all); the result does not
            depend on it.

        Returns
        -------
        torch.Tensor
            ``(n, d)`` codes ``z_0``.
        """
        top = self.n_steps if start_step is None else start_step
        steps = sorted({round(s) for s in torch.linspace(top, 1, n_steps).tolist()}, reverse=True)
        z, eps = z_T, self._chain_eps(label_index, chunk_size)
        step_rows = self.net.step_rows(torch.tensor(steps, device=z_T.device))
        abars = self.abar.double().tolist()  # coefficients as numbers: no tensor ops per step
        for k, step in enumerate(steps):
            eps_hat = eps(z, step, step_rows[k])
            abar = abars[step - 1]
            z0_hat = torch.add(z, eps_hat, alpha=-math.sqrt(1 - abar)).div_(math.sqrt(abar))
            if k + 1 == len(steps):
                return z0_hat
            abar_s = abars[steps[k + 1] - 1]
            var = eta**2 * (1 - abar_s) / (1 - abar) * (1 - abar / abar_s)
            z = z0_hat.mul_(math.sqrt(abar_s))
            z.add_(eps_hat, alpha=math.sqrt(max(1 - abar_s - var, 0.0)))
            if eta > 0:
                noise = torch.randn(z.shape, device=z.device, generator=generator, dtype=z.dtype)
                z.add_(noise, alpha=math.sqrt(var))
        return z


def extend_embedding(embedding: nn.Embedding, n_new: int) -> nn.Embedding:
    """Return a copy of ``embedding`` with ``n_new`` freshly initialised rows appended."""
    old = embedding.weight.data
    new = nn.Embedding(old.shape[0] + n_new, old.shape[1]).to(old.device, old.dtype)
    nn.init.normal_(new.weight, std=0.02)
    new.weight.data[: old.shape[0]] = old
    return new


__all__ = ["DiffusionPrior", "NoisePredictor", "make_beta_schedule", "extend_embedding"]

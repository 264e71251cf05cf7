"""The scARKIDS generative model and its ELBO, in pure torch (no AnnData, no files).

Per cell: counts ``x`` (G), batch ``b``, library ``l = sum(x)``, cell type ``c`` (observed or
latent), latent ``z0``. Generative: ``c ~ Cat(pi)``, ``z0 ~ p_psi(z0 | c)`` (latent DDPM),
``x_g ~ ZINB(l * rho_g(z0, b), theta_g, pi_g(z0, b))``. Inference: ``q(z0 | x)`` and
``q(c | z0)``. The loss per cell (nats) is the negative ELBO

    -E_q log p(x | z0, b) - H[q(z0|x)] + E_q[-log p_psi(z0 | c)]          (labelled: c = c_obs)
    + sum_c q(c|z0) (-log p_psi(z0|c) - log pi_c) - H[q(c|z0)]             (unlabelled)

plus ``classification_weight * -log q(c_obs | z0)`` for labelled cells (as in scANVI) and, in
the ``"split"`` prior-training mode, the unweighted DDPM loss that alone trains the noise net
(the encoder then sees the VLB-weighted bound through a detached copy of the noise net).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from scarkids.constants import LABEL_OFFSET, UNLABELED  # noqa: F401 (UNLABELED re-exported)
from scarkids.distributions.counts import NonZeros, softmax_count_log_prob_sum
from scarkids.module.diffusion import BetaSchedule, DiffusionPrior
from scarkids.module.priors import GaussianPrior, MixturePrior
from scarkids.nn.layers import Classifier, Decoder, Encoder, Norm

LabelMode = Literal["labelled", "unlabelled", "mixed"]


@dataclass
class LossOutput:
    """The scalar loss to minimise and per-cell terms (``(n,)`` tensors, nats per cell)."""

    loss: torch.Tensor
    reconstruction: torch.Tensor
    vae_kl: torch.Tensor
    diffusion_kl: torch.Tensor
    classification: torch.Tensor
    n_labelled: torch.Tensor
    n_correct: torch.Tensor
    prior_simple: torch.Tensor
    #: ``(C,)`` summed weight of each label over the minibatch: the observed labels, and
    #: q(c|z0) for unlabelled cells (the E step of the mixing proportion pi)
    label_mass: torch.Tensor

    @property
    def elbo(self) -> torch.Tensor:
        return -(self.reconstruction + self.vae_kl)


def _check_layers(encoder_hidden_dims, decoder_layers: int) -> None:
    if not encoder_hidden_dims:
        raise ValueError("encoder_hidden_dims needs at least one layer width, e.g. (128,)")
    if decoder_layers < 1:
        raise ValueError(f"decoder_layers must be at least 1, got {decoder_layers}")


def _make_prior(prior: str, n_latent: int, n_labels: int, **diffusion) -> nn.Module:
    """The latent prior ``p(z0 | c)`` named by ``prior`` (``diffusion``: the keyword
    arguments of :class:`DiffusionPrior`; unused by the controls)."""
    if prior == "diffusion":
        return DiffusionPrior(n_latent, n_labels, **diffusion)
    if prior == "gaussian":
        return GaussianPrior(n_latent, n_labels)
    if prior == "mixture":
        return MixturePrior(n_latent, n_labels)
    raise ValueError(f"prior must be 'diffusion', 'gaussian' or 'mixture', got {prior!r}")


def _classifier_dims(classifier_dims: int | None, n_latent: int) -> int:
    """The latent dimensions the classifier reads: all of them unless a number is given."""
    if classifier_dims is None:
        return n_latent
    if not 1 <= classifier_dims <= n_latent:
        raise ValueError(
            f"classifier_dims must be between 1 and n_latent ({n_latent}), got {classifier_dims}"
        )
    return int(classifier_dims)


class SCARKIDSModule(nn.Module):
    """VAE with a cell-type-conditioned latent diffusion prior. See the module docstring.

    Parameters
    ----------
    n_genes
        Number of genes G (columns of the counts).
    n_batches
        Number of batches; :meth:`extend_batches` adds more later.
    n_labels
        Number of cell types, or of clusters for unsupervised training; :meth:`extend_labels`
        adds more later.
    n_latent
        Latent dimension d.
    encoder_hidden_dims
        Widths of the encoder's hidden layers (at least one).
    decoder_hidden_dim, decoder_layers
        Width and number (at least 1) of the decoder's hidden layers.
    classifier_hidden_dim, classifier_layers
        Width and number of the hidden layers of the classifier ``q(c | z0)``; 0 layers
        makes it linear.
    dropout
        Dropout rate of the encoder, decoder and classifier hidden layers (not of the noise
        network).
    norm
        Normalisation of those hidden layers: ``"layer"`` (LayerNorm), ``"batch"``
        (BatchNorm) or ``"none"``.
    encode_batch
        Let the encoder see the batch (a learned vector per batch added to its first hidden
        layer); by default ``q(z0 | x)`` sees the counts only.
    input_transform
        What the encoder reads: ``"normalize_log1p"`` (``log1p`` of the counts scaled to
        1e4 per cell), ``"log1p"`` (of the raw counts) or ``"none"`` (the counts).
    likelihood
        ``"zinb"`` (zero-inflated negative binomial) or ``"nb"`` (no dropout head).
    dispersion
        Inverse dispersion ``theta``: one per gene (``"gene"``) or per gene and batch
        (``"gene-batch"``).
    n_diffusion_steps
        Number of diffusion steps T of the prior.
    beta_schedule
        Noise schedule: ``"linear"``, ``"quadratic"`` or ``"cosine"`` (see
        :func:`~scarkids.module.make_beta_schedule`).
    beta_min, beta_max
        First and last ``beta_t`` of the linear and quadratic schedules (unused by
        ``"cosine"``).
    noise_hidden_dim, noise_n_layers
        Width and number of residual blocks of the noise network ``eps_psi``.
    timestep_embed_dim
        Size of the sinusoidal step embedding of the noise network (even).
    null_label_prob
        Fraction of the rows of the ``"split"`` prior-training loss that use the null
        (unconditional) label.
    prior_training
        ``"split"``: the noise network is trained only by the unweighted DDPM loss on detached
        codes, and the encoder sees the VLB-weighted bound through a detached copy of it;
        ``"elbo"``: the bound in the ELBO trains both.
    importance_sampling
        Draw the diffusion step of the bound with ``p(t)`` proportional to its weight
        ``w_t`` instead of uniformly (both estimates are unbiased).
    label_prior_probs
        Initial mixing proportion ``pi`` of the labels, one non-negative value per label
        (normalised here); ``None``: uniform.
    prior
        The latent prior ``p(z0 | c)``: ``"diffusion"`` (the DDPM above), or the controls of
        :mod:`scarkids.module.priors`, ``"gaussian"`` (``N(0, I)``) and ``"mixture"``
        (``N(mu_c, diag sigma_c^2)`` per cell type); the diffusion settings are then unused.
    classifier_dims
        The classifier ``q(c | z0)`` reads only the first ``classifier_dims`` latent
        dimensions (``None``: all ``n_latent``), so that the classification term's pull
        acts in that subspace and leaves the others to the prior and the reconstruction.
    """

    def __init__(
        self,
        n_genes: int,
        n_batches: int,
        n_labels: int,
        *,
        n_latent: int = 10,
        encoder_hidden_dims: tuple[int, ...] = (128,),
        decoder_hidden_dim: int = 128,
        decoder_layers: int = 1,
        classifier_hidden_dim: int = 128,
        classifier_layers: int = 1,
        dropout: float = 0.1,
        norm: Norm = "layer",
        encode_batch: bool = False,
        input_transform: Literal["normalize_log1p", "log1p", "none"] = "normalize_log1p",
        likelihood: Literal["zinb", "nb"] = "zinb",
        dispersion: Literal["gene", "gene-batch"] = "gene",
        n_diffusion_steps: int = 400,
        beta_schedule: BetaSchedule = "linear",
        beta_min: float = 1e-4,
        beta_max: float = 0.02,
        noise_hidden_dim: int = 128,
        noise_n_layers: int = 2,
        timestep_embed_dim: int = 64,
        null_label_prob: float = 0.1,
        prior_training: Literal["split", "elbo"] = "split",
        importance_sampling: bool = True,
        prior: Literal["diffusion", "gaussian", "mixture"] = "diffusion",
        label_prior_probs: list[float] | None = None,
        classifier_dims: int | None = None,
    ):
        super().__init__()
        self.classifier_dims = _classifier_dims(classifier_dims, n_latent)
        _check_layers(encoder_hidden_dims, decoder_layers)
        self.n_latent = n_latent
        self.null_label_prob = null_label_prob
        self.prior_training = prior_training
        self.importance_sampling = importance_sampling
        self.encoder = Encoder(
            n_genes,
            n_latent,
            list(encoder_hidden_dims),
            n_batches if encode_batch else 0,
            norm=norm,
            dropout=dropout,
            input_transform=input_transform,
        )
        self.decoder = Decoder(
            n_latent,
            n_genes,
            [decoder_hidden_dim] * decoder_layers,
            n_batches,
            norm=norm,
            dropout=dropout,
            zero_inflated=likelihood == "zinb",
            dispersion=dispersion,
        )
        self.classifier = Classifier(
            self.classifier_dims,
            n_labels,
            classifier_hidden_dim,
            classifier_layers,
            norm=norm,
            dropout=dropout,
        )
        self.prior_type = prior
        self.prior = _make_prior(
            prior,
            n_latent,
            n_labels,
            n_steps=n_diffusion_steps,
            beta_schedule=beta_schedule,
            beta_min=beta_min,
            beta_max=beta_max,
            hidden_dim=noise_hidden_dim,
            n_layers=noise_n_layers,
            timestep_embed_dim=timestep_embed_dim,
        )
        self.register_buffer("log_label_prior", self._log_prior(n_labels, label_prior_probs))

    @staticmethod
    def _log_prior(n_labels: int, probs: list[float] | None) -> torch.Tensor:
        if probs is None:
            return torch.full((n_labels,), -math.log(n_labels))
        p = torch.as_tensor(probs, dtype=torch.float32)
        return (p / p.sum()).clamp_min(1e-12).log()

    @property
    def n_labels(self) -> int:
        return self.classifier.out.out_features

    def set_label_prior(self, mass: torch.Tensor, min_fraction: float = 1e-3) -> None:
        """Re-estimate the mixing proportion pi from ``mass`` (C,), the summed weight of each
        label over an epoch (``LossOutput.label_mass``): the EM update ``pi_c = mass_c / n``,
        except that a label holding less than ``min_fraction`` of the cells is switched off
        (pi = 1e-8), so that surplus clusters of unsupervised training stay empty instead of
        splitting cell types.

        Parameters
        ----------
        mass
            ``(C,)`` summed weight of each label.
        min_fraction
            Labels with a smaller share of ``mass`` are switched off.
        """
        pi = mass.double() / mass.sum().clamp_min(1e-12)
        pi = torch.where(pi < min_fraction, torch.full_like(pi, 1e-8), pi)
        self.log_label_prior.copy_((pi / pi.sum()).log().to(self.log_label_prior.dtype))

    def labels_in_use(self, min_fraction: float = 1e-3) -> torch.Tensor:
        """``(C,)`` bool: the labels whose mixing proportion is at least ``min_fraction``.

        Parameters
        ----------
        min_fraction
            Smallest mixing proportion ``pi_c`` of a label in use.

        Returns
        -------
        torch.Tensor
            ``(C,)`` bool, on the module's device.
        """
        return self.log_label_prior.exp() >= min_fraction

    # ------------------------------------------------------------- the model
    def inference(
        self,
        x: torch.Tensor,
        batch_index: torch.Tensor,
        *,
        sample: bool = True,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """``x`` (n, G) counts -> ``qz_mean``, ``qz_std``, ``z`` (n, d) and ``log_library`` (n,).

        Parameters
        ----------
        x
            ``(n, G)`` float32 counts.
        batch_index
            ``(n,)`` int64 batch codes; read only when the encoder sees the batch
            (``encode_batch``).
        sample
            Draw ``z`` from ``q(z0 | x)`` (reparameterised); ``False``: ``z`` is the mean.
        generator
            Random number generator of the sample (on the device of ``x``); ``None`` uses
            torch's global one.

        Returns
        -------
        dict of str to torch.Tensor
            ``qz_mean`` and ``qz_std`` (``(n, d)``, of ``q(z0 | x)``), ``z`` (``(n, d)``) and
            ``log_library`` (``(n,)``, the log of the total counts, at least 1).
        """
        mean, std = self.encoder(x, batch_index)
        if sample:
            noise = torch.randn(
                mean.shape, device=mean.device, generator=generator, dtype=mean.dtype
            )
            z = mean + std * noise
        else:
            z = mean
        log_library = x.sum(-1).clamp_min(1.0).log()
        return {"qz_mean": mean, "qz_std": std, "z": z, "log_library": log_library}

    def generative(
        self, z: torch.Tensor, batch_index: torch.Tensor, log_library: torch.Tensor | None
    ) -> dict[str, torch.Tensor | None]:
        """The decoder's ``p(x | z0, b)``.

        Parameters
        ----------
        z
            ``(n, d)`` latent codes.
        batch_index
            ``(n,)`` int64 batch codes.
        log_library
            ``(n,)`` log library sizes added to ``log_mu``; ``None``: ``log_mu`` equals
            ``log_rho``.

        Returns
        -------
        dict of str to torch.Tensor or None
            ``log_rho`` (``(n, G)``, log of the normalised expression, each row summing to 1
            after ``exp``), ``log_mu`` (``(n, G)``, log mean counts), ``log_theta`` (``(1, G)``,
            or ``(n, G)`` with per-batch dispersion) and ``dropout_logits`` (``(n, G)``, or
            ``None`` for the NB likelihood).
        """
        return self.decoder(z, batch_index, log_library)

    def loss(
        self,
        x: torch.Tensor,
        batch_index: torch.Tensor,
        labels: torch.Tensor,
        *,
        label_mode: LabelMode = "mixed",
        kl_weight: float = 1.0,
        classification_weight: float = 50.0,
        generator: torch.Generator | None = None,
        nonzero: NonZeros | None = None,
    ) -> LossOutput:
        """Negative ELBO and its terms for a minibatch.

        ``labels`` (n,) holds label indices, ``UNLABELED`` (-1) for unlabelled cells.
        ``label_mode`` is a promise about ``labels`` made from the whole dataset (no host sync
        per step): "labelled" (none is -1), "unlabelled" (all are -1) or "mixed".
        ``nonzero``: the non-zero entries of ``x`` when the data store has them at hand.

        Parameters
        ----------
        x
            ``(n, G)`` float32 counts.
        batch_index
            ``(n,)`` int64 batch codes.
        labels
            ``(n,)`` int64 label indices, ``UNLABELED`` (-1) for unlabelled cells.
        label_mode
            ``"labelled"``, ``"unlabelled"`` or ``"mixed"``, as described above.
        kl_weight
            Weight of the VAE KL term (below 1 during KL warm-up).
        classification_weight
            Weight of the classification loss ``-log q(c_obs | z0)`` of labelled cells.
        generator
            Random number generator of the latent sample, the diffusion steps and noise;
            ``None`` uses torch's global one.
        nonzero
            The non-zero entries of ``x``; ``None``: they are found from ``x`` when the
            likelihood needs them.

        Returns
        -------
        LossOutput
            ``loss`` (the scalar to minimise: the minibatch mean of the weighted terms plus
            the prior-training loss) and the per-cell terms, in nats.
        """
        inf = self.inference(x, batch_index, generator=generator)
        z, std = inf["z"], inf["qz_std"]
        # log_mu = log_softmax(logits) + log_library, formed inside the fused likelihood
        gen = self.decoder.parameters_of(z, batch_index)
        reconstruction = -softmax_count_log_prob_sum(
            x, gen["logits"], inf["log_library"], gen["log_theta"], gen["dropout_logits"], nonzero
        )
        entropy = std.log().sum(-1) + 0.5 * self.n_latent * math.log(2 * math.pi * math.e)

        n = x.shape[0]
        logits = self.classifier_logits(z)
        log_q = F.log_softmax(logits, dim=-1)
        is_labelled = labels >= 0
        safe_labels = labels.clamp_min(0)

        cross_entropy, diffusion_kl, label_mass = self._prior_cross_entropy(
            z, labels, log_q, label_mode, generator
        )
        vae_kl = cross_entropy - entropy

        if label_mode == "unlabelled":
            classification = torch.zeros(n, device=z.device)
            n_correct = torch.zeros((), device=z.device)
        else:
            nll_label = -log_q.gather(1, safe_labels[:, None]).squeeze(1)
            classification = nll_label * is_labelled
            n_correct = ((log_q.argmax(-1) == labels) & is_labelled).sum()

        prior_simple = self._prior_training_loss(z, labels, log_q, generator)
        loss = (
            reconstruction + kl_weight * vae_kl + classification_weight * classification
        ).mean() + prior_simple.mean()
        return LossOutput(
            loss=loss,
            reconstruction=reconstruction,
            vae_kl=vae_kl,
            diffusion_kl=diffusion_kl,
            classification=classification,
            n_labelled=is_labelled.sum(),
            n_correct=n_correct,
            prior_simple=prior_simple,
            label_mass=label_mass,
        )

    def _prior_cross_entropy(
        self,
        z: torch.Tensor,
        labels: torch.Tensor,
        log_q: torch.Tensor,
        label_mode: LabelMode,
        generator: torch.Generator | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``E[-log p_psi(z0 | c) - log pi_c]`` per cell (``(n,)``, nats): c observed for
        labelled cells, enumerated under q(c|z0) for unlabelled ones (minus H[q(c|z0)]);
        also the diffusion-KL part of it (``(n,)``) and the summed weight of each label
        (``(C,)``, :attr:`LossOutput.label_mass`)."""
        n, n_labels = z.shape[0], self.n_labels
        is_labelled = labels >= 0
        safe_labels = labels.clamp_min(0)
        # diffusion bound: the same (t, eps) for every label a cell is scored against
        t, scale = self.prior.sample_steps(
            n, importance=self.importance_sampling, generator=generator
        )
        eps = torch.randn(z.shape, device=z.device, generator=generator, dtype=z.dtype)
        detach_net = self.prior_training == "split"
        if label_mode == "labelled":
            bound = self.prior.negative_bound(
                z, safe_labels + LABEL_OFFSET, t, scale, eps, detach_net=detach_net
            )
            cross_entropy = bound["nll"] - self.log_label_prior[safe_labels]
            diffusion_kl = bound["diffusion_kl"]
            label_mass = torch.zeros(n_labels, device=z.device, dtype=z.dtype).index_add_(
                0, safe_labels, torch.ones_like(z[:, 0])
            )
        else:
            all_labels = torch.arange(LABEL_OFFSET, n_labels + LABEL_OFFSET, device=z.device)
            bound = self.prior.negative_bound(
                z, all_labels, t, scale, eps, detach_net=detach_net, every_label=True
            )
            nll_c = bound["nll"] - self.log_label_prior  # (n, C)
            q = log_q.exp()
            # labelled cells put all weight on their label; unlabelled use q(c|z0)
            weights = torch.where(
                is_labelled[:, None], F.one_hot(safe_labels, n_labels).to(q.dtype), q
            )
            q_entropy = -(q * log_q).sum(-1) * (~is_labelled)
            cross_entropy = (weights * nll_c).sum(-1) - q_entropy
            diffusion_kl = (weights * bound["diffusion_kl"]).sum(-1)
            label_mass = weights.detach().sum(0)
        return cross_entropy, diffusion_kl, label_mass

    def _prior_training_loss(
        self,
        z: torch.Tensor,
        labels: torch.Tensor,
        log_q: torch.Tensor,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        """Unweighted DDPM loss on detached codes (trains only the noise net, "split" mode).

        Unlabelled cells use a label drawn from q(c|z0); a fraction of rows use the null label.
        """
        if self.prior_training != "split":
            return torch.zeros(z.shape[0], device=z.device)
        drawn = torch.multinomial(log_q.detach().exp(), 1, generator=generator).squeeze(1)
        label = torch.where(labels >= 0, labels, drawn) + LABEL_OFFSET
        u = torch.rand(z.shape[0], device=z.device, generator=generator)
        label = torch.where(u < self.null_label_prob, torch.zeros_like(label), label)
        return self.prior.simple_loss(z.detach(), label, generator=generator)

    def set_mixed_precision(self, enabled: bool) -> None:
        """Compute the genes-wide layers in bfloat16 (see :func:`scarkids.nn.wide_linear`).

        Parameters
        ----------
        enabled
            ``True`` for bfloat16 products (float32 weights), ``False`` for float32.
        """
        self.encoder.body.bf16 = enabled
        self.decoder.bf16 = enabled

    # ---------------------------------------------------------- predictions
    @torch.no_grad()
    def label_log_probs(self, z: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        """``log q(c | z0)`` of the classifier, without gradients.

        Parameters
        ----------
        z
            ``(n, d)`` latent codes.
        temperature
            The logits are divided by it before the softmax (temperature scaling).

        Returns
        -------
        torch.Tensor
            ``(n, C)`` log probabilities over all labels.
        """
        return F.log_softmax(self.classifier_logits(z) / temperature, dim=-1)

    def classifier_logits(self, z: torch.Tensor) -> torch.Tensor:
        """The classifier's logits of ``z`` (its first ``classifier_dims`` dimensions).

        Parameters
        ----------
        z
            ``(n, d)`` latent codes.

        Returns
        -------
        torch.Tensor
            ``(n, C)`` logits over all labels.
        """
        return self.classifier(z[..., : self.classifier_dims])

    # -------------------------------------------------------------- surgery
    def keep_labels(self, n: int) -> None:
        """Keep the first ``n`` labels of the classifier and the prior; pi uniform again.

        Parameters
        ----------
        n
            Number of labels kept; as many or more keeps every label (and pi).
        """
        if n >= self.n_labels:
            return
        self.classifier.keep_labels(n)
        self.prior.keep_labels(n)
        self.log_label_prior = torch.full((n,), -math.log(n), device=self.log_label_prior.device)

    def extend_batches(self, n_new: int) -> None:
        """Add ``n_new`` batch slots (encoder if it sees batches, decoder, dispersion).

        The new batches' embeddings and expression offsets start at zero; with per-batch
        dispersion their ``log_theta`` starts at the mean of the existing batches'.

        Parameters
        ----------
        n_new
            Number of batches to add; 0 adds none.
        """
        self.encoder.body.extend_batches(n_new)
        self.decoder.extend_batches(n_new)

    def extend_labels(self, n_new: int) -> None:
        """Add ``n_new`` cell types to the classifier, the prior and pi (uniform again).

        Parameters
        ----------
        n_new
            Number of labels to add; 0 or fewer adds none (and leaves pi as it is).
        """
        if n_new <= 0:
            return
        self.classifier.extend_labels(n_new)
        self.prior.extend_labels(n_new)
        n = self.n_labels
        self.log_label_prior = torch.full((n,), -math.log(n), device=self.log_label_prior.device)

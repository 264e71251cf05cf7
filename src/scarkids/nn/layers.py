"""Building blocks: MLPs, the encoder q(z0|x), the ZINB decoder and the classifier q(c|z0).

Batches enter networks through an embedding added to the first hidden layer, which is the
same function as a one-hot column block but can grow rows when a later session brings new
batches (scArches-style surgery, see :meth:`BatchConditionedMLP.extend_batches`).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

Norm = Literal["layer", "batch", "none"]


def wide_linear(layer: nn.Linear, x: torch.Tensor, bf16: bool) -> torch.Tensor:
    """``layer(x)`` for a genes-wide layer; with ``bf16`` the matrix product runs in
    bfloat16 (float32 master weights, float32 bias and result): about twice as fast on
    CPUs with AVX512-BF16/AMX and on GPUs, at ~3 significant digits per product term."""
    if not bf16:
        return layer(x)
    low = torch.bfloat16
    return F.linear(x.to(low), layer.weight.to(low)).float() + layer.bias


def _norm_layer(norm: Norm, width: int) -> nn.Module:
    if norm == "layer":
        return nn.LayerNorm(width)
    if norm == "batch":
        return nn.BatchNorm1d(width, momentum=0.01, eps=1e-3)
    return nn.Identity()


def make_mlp(n_in: int, hidden_dims: list[int], *, norm: Norm, dropout: float) -> nn.Sequential:
    """Linear -> norm -> ReLU -> dropout, for each hidden width."""
    layers: list[nn.Module] = []
    for width in hidden_dims:
        layers += [nn.Linear(n_in, width), _norm_layer(norm, width), nn.ReLU(), nn.Dropout(dropout)]
        n_in = width
    return nn.Sequential(*layers)


class BatchConditionedMLP(nn.Module):
    """An MLP whose first layer adds a learned vector per batch (when ``n_batches > 0``)."""

    def __init__(
        self, n_in: int, hidden_dims: list[int], n_batches: int, *, norm: Norm, dropout: float
    ):
        super().__init__()
        first, rest = hidden_dims[0], hidden_dims[1:]
        self.first = nn.Linear(n_in, first)
        self.batch_embedding = nn.Embedding(n_batches, first) if n_batches > 0 else None
        if self.batch_embedding is not None:
            nn.init.zeros_(self.batch_embedding.weight)
        self.first_post = nn.Sequential(_norm_layer(norm, first), nn.ReLU(), nn.Dropout(dropout))
        self.rest = make_mlp(first, rest, norm=norm, dropout=dropout)
        self.n_out = hidden_dims[-1]
        self.bf16 = False  # see wide_linear; set for training by the training loop

    def forward(self, x: torch.Tensor, batch_index: torch.Tensor | None) -> torch.Tensor:
        return self.after_first(wide_linear(self.first, x, self.bf16), batch_index)

    def after_first(self, h: torch.Tensor, batch_index: torch.Tensor | None) -> torch.Tensor:
        """The network after its first linear layer, ``h = first(x)`` (n, width)."""
        if self.batch_embedding is not None:
            h = h + self.batch_embedding(batch_index)
        return self.rest(self.first_post(h))

    def extend_batches(self, n_new: int) -> None:
        if self.batch_embedding is None or n_new <= 0:
            return
        old = self.batch_embedding.weight.data
        new = nn.Embedding(old.shape[0] + n_new, old.shape[1]).to(old.device, old.dtype)
        nn.init.zeros_(new.weight)
        new.weight.data[: old.shape[0]] = old
        self.batch_embedding = new


class Encoder(nn.Module):
    """``q(z0 | x) = N(mean, diag(var))`` on ``log1p(x)``; sees the batch only if asked."""

    def __init__(
        self,
        n_genes: int,
        n_latent: int,
        hidden_dims: list[int],
        n_batches: int,
        *,
        norm: Norm,
        dropout: float,
        input_transform: Literal["normalize_log1p", "log1p", "none"] = "normalize_log1p",
    ):
        super().__init__()
        self.input_transform = input_transform
        self.body = BatchConditionedMLP(n_genes, hidden_dims, n_batches, norm=norm, dropout=dropout)
        self.mean = nn.Linear(self.body.n_out, n_latent)
        self.log_var = nn.Linear(self.body.n_out, n_latent)

    def forward(
        self, x: torch.Tensor, batch_index: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` (n, G) counts -> mean (n, d) and standard deviation (n, d)."""
        if self.input_transform == "normalize_log1p":
            # library-size normalised: the encoder cannot read a batch off sequencing depth
            h = torch.log1p(x * (1e4 / x.sum(-1, keepdim=True).clamp_min(1.0)))
        elif self.input_transform == "log1p":
            h = torch.log1p(x)
        else:
            h = x
        return self._head(self.body(h, batch_index))

    def _head(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        std = (self.log_var(h).clamp(-15.0, 10.0).exp() + 1e-4).sqrt()
        return self.mean(h), std

    def transform_csr(self, indptr: np.ndarray, data: np.ndarray) -> torch.Tensor:
        """The input transform on the stored values of CSR counts (zeros stay zeros).

        Parameters
        ----------
        indptr
            ``(n + 1,)`` row pointers into ``data`` (starting at 0).
        data
            The stored counts (float32).

        Returns
        -------
        torch.Tensor
            float32 values for :meth:`forward_csr` (new memory; ``data`` is not changed). The
            logarithm runs in torch, on all its threads (numpy's runs on one, ~4x slower on
            2 cores).
        """
        if self.input_transform == "none":
            return torch.from_numpy(data.astype(np.float32, copy=True))
        if self.input_transform == "log1p":
            return torch.from_numpy(data.astype(np.float32, copy=True)).log1p_()
        lengths = np.diff(indptr)
        starts = indptr[:-1][lengths > 0]
        lib = np.zeros(lengths.shape[0], dtype=np.float64)
        if data.size:
            lib[lengths > 0] = np.add.reduceat(data, starts, dtype=np.float64)
        values = np.repeat((1e4 / np.maximum(lib, 1.0)).astype(np.float32), lengths)
        values *= data
        return torch.from_numpy(values).log1p_()

    def forward_csr(
        self,
        crow: torch.Tensor,
        col: torch.Tensor,
        values: torch.Tensor,
        n_genes: int,
        batch_index: torch.Tensor | None,
        first_weight_t: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`forward` on counts given as CSR arrays, never made dense: the values come
        transformed (:meth:`transform_csr`) and the first layer is a weighted sum of the
        weight rows of each cell's genes (``embedding_bag``: on 2 CPU cores about 1.8x a
        sparse-dense product and 3x densifying; equal to :meth:`forward` within float32
        rounding, ``tests/test_inference.py``).

        Parameters
        ----------
        crow, col, values
            CSR row pointers (``(n + 1,)``, starting at 0), column indices and the
            transformed float32 values of ``n`` cells; ``crow`` and ``col`` of one integer
            dtype.
        n_genes
            Number of columns G (the first layer's input size).
        batch_index
            ``(n,)`` batch codes (read only when the encoder sees the batch).
        first_weight_t
            The first layer's weight transposed and contiguous, ``(G, hidden)``, made once
            by a caller that encodes many chunks; ``None`` makes it here.

        Returns
        -------
        tuple of torch.Tensor
            Mean and standard deviation, ``(n, d)`` each.
        """
        first = self.body.first
        if first.in_features != n_genes:
            raise ValueError(f"forward_csr: {n_genes} genes, the encoder reads {first.in_features}")
        h = F.embedding_bag(
            col,
            first.weight.t().contiguous() if first_weight_t is None else first_weight_t,
            crow,
            mode="sum",
            per_sample_weights=values,
            include_last_offset=True,
        )
        h = h + first.bias
        return self._head(self.body.after_first(h, batch_index))


class Decoder(nn.Module):
    """``p(x | z0, b)``: ZINB with mean ``library * softmax(f(z0, b))``, dropout ``h(z0, b)``."""

    def __init__(
        self,
        n_latent: int,
        n_genes: int,
        hidden_dims: list[int],
        n_batches: int,
        *,
        norm: Norm,
        dropout: float,
        zero_inflated: bool = True,
        dispersion: Literal["gene", "gene-batch"] = "gene",
    ):
        super().__init__()
        self.body = BatchConditionedMLP(
            n_latent, hidden_dims, n_batches, norm=norm, dropout=dropout
        )
        self.scale = nn.Linear(self.body.n_out, n_genes)
        # a per-batch, per-gene offset of the expression logits: gene-wise technical effects
        # are explained here directly, so z0 gains nothing by encoding the batch
        self.batch_gene_offset = nn.Embedding(max(n_batches, 1), n_genes)
        nn.init.zeros_(self.batch_gene_offset.weight)
        self.dropout_logits = nn.Linear(self.body.n_out, n_genes) if zero_inflated else None
        self.dispersion = dispersion
        self.bf16 = False  # see wide_linear; set for training by the training loop
        rows = n_batches if dispersion == "gene-batch" else 1
        self.log_theta = nn.Parameter(torch.zeros(rows, n_genes))

    def normalized_expression(
        self,
        z: torch.Tensor,
        batch_index: torch.Tensor,
        batch: int | None = None,
        *,
        out: torch.Tensor | None = None,
        total: float = 1.0,
    ) -> torch.Tensor:
        """``total * rho(z0, b)``: ``(n, G)`` expression, each row summing to ``total`` (one
        softmax, without the dispersion and dropout heads).

        Parameters
        ----------
        z
            ``(n, d)`` latent codes.
        batch_index
            ``(n,)`` batch codes.
        batch
            One batch code for every row (then ``batch_index`` is unused and the batch's
            gene offsets are one broadcast row instead of a gather); ``None``: per row.
        out
            ``(n, G)`` float32 tensor the result is written into (the logits and the
            softmax run in it, with no other ``(n, G)`` temporary: a caller's preallocated
            output, on a CPU); ``None`` allocates.
        total
            What each row sums to (a library size; 1 gives ``rho``).

        Returns
        -------
        torch.Tensor
            ``(n, G)`` float32 (``out`` when given).
        """
        if batch is not None:
            batch_index = torch.full((z.shape[0],), batch, device=z.device, dtype=torch.long)
            offset = self.batch_gene_offset.weight[batch]
        else:
            offset = self.batch_gene_offset(batch_index)
        h = self.body(z, batch_index)
        if self.bf16:
            logits = wide_linear(self.scale, h, True) + offset
            if out is not None:
                logits = out.copy_(logits)
        else:  # the offsets ride in the product's bias: no separate pass over (n, G)
            logits = torch.addmm(self.scale.bias + offset, h, self.scale.weight.t(), out=out)
        if out is None:  # one fused kernel (on a GPU, fewer launches)
            return torch.softmax(logits, dim=-1).mul_(total)
        logits.sub_(logits.amax(1, keepdim=True)).exp_()  # the softmax in place
        return logits.mul_(total / logits.sum(1, keepdim=True))

    def parameters_of(
        self, z: torch.Tensor, batch_index: torch.Tensor
    ) -> dict[str, torch.Tensor | None]:
        """The raw outputs: expression ``logits`` (n, G; ``log_rho`` up to a per-cell
        constant), ``log_theta`` (1 or n, G) and ``dropout_logits`` (n, G, or None for NB)."""
        h = self.body(z, batch_index)
        logits = wide_linear(self.scale, h, self.bf16) + self.batch_gene_offset(batch_index)
        if self.dispersion == "gene-batch":
            log_theta = self.log_theta[batch_index]
        else:
            log_theta = self.log_theta
        drop = (
            wide_linear(self.dropout_logits, h, self.bf16)
            if self.dropout_logits is not None
            else None
        )
        return {"logits": logits, "log_theta": log_theta, "dropout_logits": drop}

    def forward(
        self, z: torch.Tensor, batch_index: torch.Tensor, log_library: torch.Tensor | None
    ) -> dict[str, torch.Tensor | None]:
        """Return ``log_rho`` (n, G: log of the normalised expression), ``log_mu`` (with the
        library added when given), ``log_theta`` (1 or n, G) and ``dropout_logits``."""
        out = self.parameters_of(z, batch_index)
        log_rho = F.log_softmax(out.pop("logits"), dim=-1)
        log_mu = log_rho + log_library[:, None] if log_library is not None else log_rho
        return {"log_rho": log_rho, "log_mu": log_mu, **out}

    def extend_batches(self, n_new: int) -> None:
        self.body.extend_batches(n_new)
        if n_new > 0:
            old = self.batch_gene_offset.weight.data
            new = nn.Embedding(old.shape[0] + n_new, old.shape[1]).to(old.device, old.dtype)
            new.weight.data.zero_()
            new.weight.data[: old.shape[0]] = old
            self.batch_gene_offset = new
        if self.dispersion == "gene-batch" and n_new > 0:
            old = self.log_theta.data
            mean_row = old.mean(0, keepdim=True).expand(n_new, -1)
            self.log_theta = nn.Parameter(torch.cat([old, mean_row], 0))


class Classifier(nn.Module):
    """``q(c | z0)``: logits over the known cell types (or clusters)."""

    def __init__(
        self,
        n_latent: int,
        n_labels: int,
        hidden_dim: int,
        n_layers: int,
        *,
        norm: Norm,
        dropout: float,
    ):
        super().__init__()
        self.body = make_mlp(n_latent, [hidden_dim] * n_layers, norm=norm, dropout=dropout)
        self.out = nn.Linear(hidden_dim if n_layers > 0 else n_latent, n_labels)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(z))

    def extend_labels(self, n_new: int) -> None:
        if n_new <= 0:
            return
        old = self.out
        new = nn.Linear(old.in_features, old.out_features + n_new).to(old.weight.device)
        with torch.no_grad():
            new.weight[: old.out_features] = old.weight
            new.bias[: old.out_features] = old.bias
        self.out = new

    def keep_labels(self, n: int) -> None:
        """Keep the outputs of the first ``n`` labels only."""
        old = self.out
        if n >= old.out_features:
            return
        new = nn.Linear(old.in_features, n).to(old.weight.device)
        with torch.no_grad():
            new.weight.copy_(old.weight[:n])
            new.bias.copy_(old.bias[:n])
        self.out = new

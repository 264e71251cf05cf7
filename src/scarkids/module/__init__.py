"""The generative model in pure torch: the VAE, its ELBO and the latent diffusion prior.

Nothing here reads files or AnnData; :mod:`scarkids.model` wraps it for users.
"""

from scarkids.module.diffusion import DiffusionPrior, NoisePredictor, make_beta_schedule
from scarkids.module.vae import UNLABELED, LossOutput, SCARKIDSModule

__all__ = [
    "DiffusionPrior",
    "LossOutput",
    "NoisePredictor",
    "SCARKIDSModule",
    "UNLABELED",
    "make_beta_schedule",
]

"""Neural networks: the spectral autoencoder of stage 1 and the helpers that adapt Stable Diffusion for stage 2."""

from .speuae import SpeUAE

__all__ = ["SpeUAE"]

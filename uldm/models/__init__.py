"""Neural networks: the spectral autoencoder of stage 1, the helpers that adapt Stable Diffusion for stage 2, and
the R2H-Diff denoiser (the second model family)."""

from .r2hdiff import R2HDiffNet
from .speuae import SpeUAE

__all__ = ["R2HDiffNet", "SpeUAE"]

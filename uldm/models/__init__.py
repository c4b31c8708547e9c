"""Neural networks: the spectral autoencoder of stage 1, the SpaAE interface (`spaae`: AutoencoderKL or the
pretrained TAESD family) and the helpers that adapt Stable Diffusion for stage 2, and the R2H-Diff denoiser."""

from . import spaae
from .mstpp import MSTPlusPlus
from .r2hdiff import R2HDiffNet
from .speuae import SpeUAE

__all__ = ["MSTPlusPlus", "R2HDiffNet", "SpeUAE", "spaae"]

"""Diffusers-style inference pipelines (installed as `uldm.pipelines`)."""

from .common import SpectralReconstructionOutput
from .pipeline_mstpp import MSTPlusPlusPipeline
from .pipeline_r2hdiff import R2HDiffPipeline
from .pipeline_spectral_reconstruction import SpectralReconstructionPipeline

__all__ = ["MSTPlusPlusPipeline", "R2HDiffPipeline", "SpectralReconstructionOutput", "SpectralReconstructionPipeline"]

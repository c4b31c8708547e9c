"""Diffusers-style inference pipelines (installed as `uldm.pipelines`)."""

from .pipeline_spectral_reconstruction import SpectralReconstructionOutput, SpectralReconstructionPipeline

__all__ = ["SpectralReconstructionOutput", "SpectralReconstructionPipeline"]

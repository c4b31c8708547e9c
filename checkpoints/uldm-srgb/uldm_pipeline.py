"""diffusers' generic from_pretrained imports SpectralReconstructionPipeline from here; it needs uldm installed (pip install uldm)."""

from uldm.pipelines.pipeline_spectral_reconstruction import SpectralReconstructionPipeline  # noqa: F401

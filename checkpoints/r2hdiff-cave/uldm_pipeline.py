"""diffusers' generic from_pretrained imports R2HDiffPipeline from here; it needs uldm installed (pip install uldm)."""

from uldm.pipelines.pipeline_r2hdiff import R2HDiffPipeline  # noqa: F401

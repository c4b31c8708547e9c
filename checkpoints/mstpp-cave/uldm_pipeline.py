"""diffusers' generic from_pretrained imports MSTPlusPlusPipeline from here; it needs uldm installed (pip install uldm)."""

from uldm.pipelines.pipeline_mstpp import MSTPlusPlusPipeline  # noqa: F401

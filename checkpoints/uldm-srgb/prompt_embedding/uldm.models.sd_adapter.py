"""diffusers' generic from_pretrained imports PromptEmbedding from here; it needs uldm installed (pip install uldm)."""

from uldm.models.sd_adapter import PromptEmbedding  # noqa: F401

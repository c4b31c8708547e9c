"""diffusers' generic from_pretrained imports MSTPlusPlus from here; it needs uldm installed (pip install uldm)."""

from uldm.models.mstpp import MSTPlusPlus  # noqa: F401

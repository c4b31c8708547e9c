"""diffusers' generic from_pretrained imports R2HDiffNet from here; it needs uldm installed (pip install uldm)."""

from uldm.models.r2hdiff import R2HDiffNet  # noqa: F401

"""diffusers' generic from_pretrained imports RootPolynomialPrior from here; it needs uldm installed (pip install uldm)."""

from uldm.models.code_prior import RootPolynomialPrior  # noqa: F401

"""diffusers' generic from_pretrained imports SpeUAE from here; it needs uldm installed (pip install uldm)."""

from uldm.models.speuae import SpeUAE  # noqa: F401

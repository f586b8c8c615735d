"""Modules of artrt: layers that own parameters (or configuration) and call ``artrt.ops``."""

from artrt.nn.gated import GatedSigmoid, GatedTanh

__all__ = ["GatedSigmoid", "GatedTanh"]

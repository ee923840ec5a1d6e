"""Diffusion Control Studio: an engine for controllable generation with diffusion models."""

__version__ = "0.1.0"

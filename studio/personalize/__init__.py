"""Personalization: teach a model new concepts (Textual Inversion, LoRA, DreamBooth, Custom Diffusion) and read users' concept files."""

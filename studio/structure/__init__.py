"""Structure control: explicit spatial and image conditions as condition channels of the one sampler.

    maps       control maps (outline, layout) from the shapes renderer, from uploads (OpenCV Canny) and drawings
    spec       ControlSpec / ImagePromptSpec / StructureSpec: the settings of a run, checked before model work
    adapters   ControlNet (Zhang et al. 2023), T2I-Adapter (Mou et al. 2024) and IP-Adapter (Ye et al. 2023)
               models: loading the files users have, checked against the base model
    runtime    what a run attaches to the denoiser's conditions, and the decoupled image cross-attention
    training   per-channel dropout training of the embedded model's controls (studio.train is the entry point)
"""

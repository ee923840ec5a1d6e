"""Attention processors installed on the UNet for the duration of one job.

`capture_cross_attention(unet, store)` swaps in a capturing processor for the cross-attention
layers only (self-attention keeps its processor) and restores every previous processor on exit,
also on error or cancel. The wrapped processor still computes the layer's output (fast SDPA, which
never materialises probabilities), so images are identical with capture on or off; the capture
recomputes softmax(QK^T/sqrt(d)) for just the one batch element whose maps are shown.
When capture is off nothing here runs and the UNet's processors are never touched.

`control_attention(unet, controller, layers)` installs `EditingAttentionProcessor` on the layers a
controller edits (Prompt-to-Prompt, studio.attention.controllers): the processor computes query, key
and value exactly as AttnProcessor2_0 and lets the controller produce the attention output from them.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Iterator
from contextlib import contextmanager
from typing import Protocol

import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention
from torch import Tensor


def map_size(latent_size: tuple[int, int], n_pixels: int) -> tuple[int, int]:
    """(h, w) of a layer with n_pixels positions: the latent size halved k times (rounding up, as
    stride-2 convolutions do). Derived from the data, never from magic sizes or layer order."""
    h, w = latent_size
    while h * w > n_pixels:
        h, w = (h + 1) // 2, (w + 1) // 2
    if h * w != n_pixels:
        raise ValueError(f"attention over {n_pixels} positions does not match latents of {latent_size}")
    return h, w


class AttentionStore:
    """Running mean of cross-attention probabilities per UNet resolution (no per-step history).

    Fed by the capture processors of every cross-attention layer; told the step index by the
    sampler (`begin_step`), it records only at `capture_steps` and only batch element `batch_index`
    (the conditional branch of the first image).
    """

    def __init__(self, latent_size: tuple[int, int], batch_index: int, capture_steps: Container[int] | None = None):
        self.latent_size = latent_size  # (h, w) of the latents at the UNet's input
        self.batch_index = batch_index
        self.capture_steps = capture_steps  # None: every step
        self.capturing = False
        self.sums: dict[tuple[int, int], Tensor] = {}  # (h, w) of a resolution -> (h*w, T) summed probabilities
        self.counts: dict[tuple[int, int], int] = {}  # layer calls added to each sum

    def begin_step(self, i: int, t: Tensor) -> None:
        self.capturing = self.capture_steps is None or i in self.capture_steps

    def add(self, probabilities: Tensor) -> None:
        """probabilities: (N, T) for one layer, averaged over heads; N = h*w of that layer."""
        size = map_size(self.latent_size, probabilities.shape[0])
        if size in self.sums:
            self.sums[size] += probabilities
            self.counts[size] += 1
        else:
            self.sums[size] = probabilities.clone()
            self.counts[size] = 1

    def means(self) -> dict[tuple[int, int], Tensor]:
        """Mean over layers and captured steps, per resolution: (h, w) -> (h*w, T)."""
        return {size: self.sums[size] / self.counts[size] for size in self.sums}


def cross_attention_probabilities(attn: Attention, hidden_states: Tensor, encoder_hidden_states: Tensor) -> Tensor:
    """softmax(QK^T * scale) averaged over heads for ONE batch element: (1, N, C) x (1, T, D) -> (N, T).

    Mirrors AttnProcessor2_0's path to the scores (group norm, cross norm, optional q/k norms),
    in float32 so fp16 models give the same maps.
    """
    if hidden_states.ndim == 4:  # (1, C, h, w) -> (1, h*w, C)
        hidden_states = hidden_states.flatten(2).transpose(1, 2)
    if attn.group_norm is not None:
        hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
    if attn.norm_cross:
        encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
    query = attn.to_q(hidden_states)
    key = attn.to_k(encoder_hidden_states)
    head_dim = key.shape[-1] // attn.heads
    query = query.view(1, -1, attn.heads, head_dim).transpose(1, 2)  # (1, H, N, d)
    key = key.view(1, -1, attn.heads, head_dim).transpose(1, 2)  # (1, H, T, d)
    if attn.norm_q is not None:
        query = attn.norm_q(query)
    if attn.norm_k is not None:
        key = attn.norm_k(key)
    return head_mean_probabilities(query, key, attn.scale)[0]  # (N, T)


def head_mean_probabilities(query: Tensor, key: Tensor, scale: float) -> Tensor:
    """softmax(QK^T * scale) averaged over heads, in float32: (B, H, N, d) x (B, H, T, d) -> (B, N, T).

    Five kernels on a GPU: two casts (which are also the contiguous copies bmm needs), one scaled bmm,
    the softmax and the mean. Each is a launch the host pays for in every layer at every step."""
    b, h, n, d = query.shape
    query = query.float().reshape(b * h, n, d)
    key = key.float().reshape(b * h, -1, d)
    scores = torch.baddbmm(query.new_empty(()), query, key.transpose(1, 2), beta=0.0, alpha=scale)  # (B*H, N, T)
    return scores.softmax(dim=-1).view(b, h, n, -1).mean(dim=1)


class CrossAttentionCapture:
    """Computes the layer with the processor it replaces; on capture steps also records the maps."""

    def __init__(self, inner, store: AttentionStore):
        self.inner = inner
        self.store = store

    def __call__(self, attn: Attention, hidden_states: Tensor, encoder_hidden_states: Tensor | None = None,
                 attention_mask: Tensor | None = None, temb: Tensor | None = None, *args, **kwargs) -> Tensor:
        if self.store.capturing and encoder_hidden_states is not None:
            i = self.store.batch_index
            with torch.no_grad():
                self.store.add(
                    cross_attention_probabilities(attn, hidden_states[i : i + 1], encoder_hidden_states[i : i + 1])
                )
        return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)


@contextmanager
def replaced_processors(unet: UNet2DConditionModel, replace: Callable[[str, Attention, object], object | None]) -> Iterator[None]:
    """Install `replace(key, layer, previous processor)` (None keeps the previous one) on every attention
    layer; restore all previous processors on exit, also on error or cancel."""
    previous = unet.attn_processors  # {"<module path>.processor": processor}
    layers = {f"{name}.processor": module for name, module in unet.named_modules() if isinstance(module, Attention)}
    installed = {}
    for key, processor in previous.items():
        replacement = replace(key, layers[key], processor)
        installed[key] = processor if replacement is None else replacement
    unet.set_attn_processor(installed)  # set_attn_processor consumes the dict it is given
    try:
        yield
    finally:
        unet.set_attn_processor(dict(previous))


@contextmanager
def capture_cross_attention(unet: UNet2DConditionModel, store: AttentionStore) -> Iterator[AttentionStore]:
    """Install capture processors on the cross-attention layers; restore the previous ones on exit."""
    def capture(key: str, layer: Attention, processor: object) -> object | None:
        return CrossAttentionCapture(processor, store) if layer.is_cross_attention else None

    with replaced_processors(unet, capture):
        yield store


class AttentionController(Protocol):
    """Produces a layer's attention output from its query, key and value (Prompt-to-Prompt's one hook,
    `controller(attn, is_cross, place)`, without layer counting: the sampler tells it the step)."""

    def edits(self, layer: Attention) -> bool:
        """Whether this layer needs the editing processor at all (others keep theirs)."""
        ...

    def attend(self, layer: Attention, query: Tensor, key: Tensor, value: Tensor, is_cross: bool) -> Tensor:
        """(B, H, N, d), (B, H, T, d), (B, H, T, d) -> attention output (B, H, N, d)."""
        ...


class EditingAttentionProcessor:
    """AttnProcessor2_0 with the attention itself delegated to a controller (which uses SDPA wherever
    it can); projections, norms, residual and rescale are the stock processor's."""

    def __init__(self, controller: AttentionController):
        self.controller = controller

    def __call__(self, attn: Attention, hidden_states: Tensor, encoder_hidden_states: Tensor | None = None,
                 attention_mask: Tensor | None = None, temb: Tensor | None = None, *args, **kwargs) -> Tensor:
        if attention_mask is not None:
            raise NotImplementedError("attention control does not support attention masks")
        is_cross = encoder_hidden_states is not None
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        batch_size = hidden_states.shape[0]
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)  # (B, H, N, d)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)  # (B, H, T, d)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        hidden_states = self.controller.attend(attn, query, key, value, is_cross)  # (B, H, N, d)
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim).to(query.dtype)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))  # projection, dropout
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


@contextmanager
def control_attention(unet: UNet2DConditionModel, controller: AttentionController) -> Iterator[AttentionController]:
    """Install the editing processor on the layers `controller.edits`; restore the previous ones on exit."""
    processor = EditingAttentionProcessor(controller)

    def edit(key: str, layer: Attention, previous: object) -> object | None:
        return processor if controller.edits(layer) else None

    with replaced_processors(unet, edit):
        yield controller

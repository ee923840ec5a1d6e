"""Prompt-to-Prompt attention control (Hertz et al. 2022, §3.2 "Controlling the Cross-Attention").

Source and target prompts are denoised in one batch from the same initial latent. In every edited
cross-attention layer the target's attention map is fused from the source's:

    Ã = M ⊙ A_t + (1 − M) ⊙ A_s     (Hertz et al.'s Edit(M_t, M*_t, t) -- their maps M are our A -- as a column mask M)

Every edit -- Hertz et al.'s word swap, refinement and re-weighting, and our token reordering, degree-word
insertion and style injection -- is a *column* operation: word swap and refinement move source columns
to target columns (a mapper R, T_s x T_t), re-weighting scales columns (equalizer e), style injection
blends them, and the replacement window c_i(word) switches columns over the run. So at step i

    Ã_i = A_s R diag(s_i) + A_t diag(u_i),   s_i = c_i a e,   u_i = c_i (1 − a) e + (1 − c_i)

where a_j is the share of target column j taken from the source (1 aligned, 0 new word, 1 − α for
style injection). Ã is linear in the columns, so the layer output needs no probabilities at all:

    Ã V_t = A_s (R diag(s_i) V_t) + A_t (diag(u_i) V_t)

i.e. two fused SDPA calls with changed *values*. Self-attention replacement (A_t := A_s, P2P's
`replace_self_attention`) is SDPA(Q_s, K_s, V_t). Probabilities are materialised only for the maps
shown and the local blend: (N, T) per layer for the two conditional images, reduced to a running mean.

Edits apply to the conditional branch only, as prompt-to-prompt does (its controller edits
`attn[h // 2:]`): the unconditional prompt is the same for both images, so its attention carries no
prompt difference to transfer.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention
from torch import Tensor

from studio.attention.processors import head_mean_probabilities, map_size
from studio.conditioning import Tokens
from studio.errors import InvalidInputError
from studio.guidance import schedule_factors

# --------------------------------------------------------------------------------------------
# Word and token alignment (prompt-to-prompt's seq_aligner, by word, with difflib)


def swap_alignment(source_words: Sequence[str], target_words: Sequence[str]) -> list[int | None]:
    """Word swap: target word j takes source word j's place (Hertz et al. 2022, §3.2 "Word Swap")."""
    if len(source_words) != len(target_words):
        raise InvalidInputError(
            f"Word swap replaces words one for one, but the source prompt has {len(source_words)} words and the "
            f"target prompt {len(target_words)}: keep the word count, or choose the refine edit to insert or delete words."
        )
    return list(range(len(target_words)))


def refine_alignment(source_words: Sequence[str], target_words: Sequence[str]) -> list[int | None]:
    """Refinement (insertion, deletion, reordering): for each target word its source word, None if new
    (Hertz et al. 2022, §3.2 "Adding a New Phrase").

    Words in the longest matching blocks (difflib, Ratcliff-Obershelp) align in order; a word left
    over on both sides with the same text (a moved word, "a red big" -> "a big red") aligns to its
    source occurrence: token reordering, our extension of the paper's alignment."""
    lowered_source = [w.lower() for w in source_words]
    lowered_target = [w.lower() for w in target_words]
    alignment: list[int | None] = [None] * len(target_words)
    matcher = difflib.SequenceMatcher(a=lowered_source, b=lowered_target, autojunk=False)
    for block in matcher.get_matching_blocks():
        for k in range(block.size):
            alignment[block.b + k] = block.a + k
    unused = [i for i in range(len(source_words)) if i not in alignment]
    for j, word in enumerate(lowered_target):
        if alignment[j] is None:
            moved = next((i for i in unused if lowered_source[i] == word), None)
            if moved is not None:
                alignment[j] = moved
                unused.remove(moved)
    return alignment


def word_positions(tokens: Tokens, word: str) -> list[int]:
    """Indices into tokens.words of every occurrence of `word` (case-insensitive)."""
    return [i for i, w in enumerate(tokens.words) if w.lower() == word.lower()]


def column_mapper(source: Tokens, target: Tokens, alignment: Sequence[int | None]) -> tuple[Tensor, Tensor]:
    """(R, a): R (T, T) takes source columns to target columns; a (T,) is 1 where a target column comes
    from the source, 0 for a new word's tokens.

    A word of n source tokens moved onto m target tokens gives each target token the sum of the source
    columns divided by m (attention mass kept: prompt-to-prompt's replacement mapper), so words of
    different token lengths swap. The start token maps to itself; the end and padding tokens after the
    last word map in order (they carry the prompt's summary in CLIP encoders)."""
    length = len(target.ids)
    mapper = torch.zeros(length, len(source.ids))
    for j, i in enumerate(alignment):
        if i is None:
            continue
        source_tokens, target_tokens = source.word_tokens[i], target.word_tokens[j]
        for t in target_tokens:
            mapper[t, source_tokens] = 1.0 / len(target_tokens)
    mapper[0, 0] = 1.0  # start token
    source_end = max((p for w in source.word_tokens for p in w), default=0) + 1
    target_end = max((p for w in target.word_tokens for p in w), default=0) + 1
    for t in range(target_end, length):
        mapper[t, min(source_end + t - target_end, len(source.ids) - 1)] = 1.0
    from_source = (mapper.sum(dim=1) > 0).float()
    return mapper.T.contiguous(), from_source  # (T_s, T_t), (T_t,)


# --------------------------------------------------------------------------------------------
# The edit as precomputed per-step data


@dataclass(frozen=True)
class WordWindow:
    """Cross-attention replacement for one target word's tokens over [start, stop] of the run
    (prompt-to-prompt's per-word `cross_replace_steps`)."""

    word: str
    start: float
    stop: float


@dataclass(frozen=True)
class DegreeWord:
    """Degree-word insertion ("a cute dog" -> "a very cute dog"), our edit built on Hertz et al. 2022's
    re-weighting (not in the paper): the inserted `word` takes eta x the modified word's source column,
    and the modified word's column is scaled by 1 + boost."""

    word: str
    modifies: str
    boost: float = 0.5  # lambda
    eta: float = 0.5


@dataclass(frozen=True)
class EditPlan:
    """What every edited layer does at each step (per-step, per-token data, precomputed)."""

    mapper: Tensor  # (T_s, T_t) source columns -> target columns
    source_weights: Tensor  # (N, T_t) s_i: coefficient of (A_s R)[:, j]
    target_weights: Tensor  # (N, T_t) u_i: coefficient of A_t[:, j]
    self_replace: Tensor  # (N,) bool: target self-attention uses the source's map at step i
    self_max_fraction: float  # replace self-attention only in layers at most this fraction of the latent side


def step_window(steps: int, start: float, stop: float) -> Tensor:
    """(N,) 1.0 for the steps whose progress i/(N-1) lies in [start, stop]: the same windows as guidance."""
    return schedule_factors("constant", 0.0, start, stop, torch.zeros(steps))


def edit_plan(
    source: Tokens,
    target: Tokens,
    alignment: Sequence[int | None],
    steps: int,
    cross_window: tuple[float, float],
    self_window: tuple[float, float],
    word_windows: Sequence[WordWindow] = (),
    equalizer: Tensor | None = None,
    style_alpha: float | None = None,
    degree_words: Sequence[DegreeWord] = (),
    self_max_fraction: float = 1.0,
) -> EditPlan:
    """Build the per-step column weights of `Ã_i = A_s R diag(s_i) + A_t diag(u_i)` (module docstring).

    equalizer (T_t,) scales target columns (Hertz et al. 2022, §3.2 "Attention Re-weighting"; 1 = unchanged,
    negative allowed). style_alpha blends every aligned column as (1 − α) A_s + α A_t (style injection, our
    blend: the paper gets style edits from refinement)."""
    mapper, from_source = column_mapper(source, target, alignment)
    equalizer = torch.ones(len(target.ids)) if equalizer is None else equalizer.clone()
    for degree in degree_words:
        # the inserted word's tokens take the modified word's source column, scaled by eta
        modified = word_positions(source, degree.modifies)
        inserted = [j for j in word_positions(target, degree.word) if alignment[j] is None]
        if not modified or not inserted:
            raise InvalidInputError(
                f"Degree word: {degree.word!r} must be a word inserted in the target prompt and {degree.modifies!r} "
                "a word of the source prompt."
            )
        source_tokens = [p for i in modified for p in source.word_tokens[i]]
        for j in inserted:
            for t in target.word_tokens[j]:
                mapper[:, t] = 0
                mapper[source_tokens, t] = 1.0 / len(target.word_tokens[j])
                from_source[t] = 1.0
                equalizer[t] *= degree.eta
        for j, i in enumerate(alignment):
            if i in modified:
                equalizer[target.word_tokens[j]] *= 1 + degree.boost
    share = from_source * (1 - style_alpha) if style_alpha is not None else from_source  # a
    window = step_window(steps, *cross_window)[:, None].float().repeat(1, len(target.ids))  # (N, T) c_i
    for word_window in word_windows:
        positions = word_positions(target, word_window.word)
        columns = [t for j in positions for t in target.word_tokens[j]]
        window[:, columns] = step_window(steps, word_window.start, word_window.stop)[:, None].float()
    return EditPlan(
        mapper=mapper,
        source_weights=window * share * equalizer,
        target_weights=window * (1 - share) * equalizer + (1 - window),
        self_replace=step_window(steps, *self_window) > 0,
        self_max_fraction=self_max_fraction,
    )


def token_equalizer(target: Tokens, word_weights: Sequence[tuple[int, float]]) -> Tensor:
    """(T,) column scales from (target word index, weight) pairs; 1 elsewhere."""
    equalizer = torch.ones(len(target.ids))
    for word, weight in word_weights:
        equalizer[target.word_tokens[word]] = weight
    return equalizer


# --------------------------------------------------------------------------------------------
# The controller the editing processors call


class PromptToPromptController:
    """Attention control for one P2P run: the UNet batch holds the source and target images; this
    edits the target's conditional element from the source's (module docstring), and keeps running
    means of both conditional elements' cross-attention for the maps shown (no per-step history).

    On a GPU a P2P step costs what the host spends issuing it (an SD 1.5 CFG step at 512 px on an H200
    is ~24 ms, mostly kernel launches), so every layer call issues as few operations as it can: the
    per-step weights are precomputed on the UNet's device, layers outside the edit windows take the
    plain SDPA path (decided on the host, never by reading the GPU), and the maps are summed raw per
    resolution, the fused target map Ã being formed once per resolution and step (it is linear in them).
    """

    def __init__(self, plan: EditPlan, source_index: int, target_index: int, latent_size: tuple[int, int],
                 device: torch.device | None = None):
        self.plan = plan
        self.source_index = source_index  # positions in the UNet batch (conditional branch)
        self.target_index = target_index
        self.latent_size = latent_size
        self.step = 0
        # which steps change anything: host-side, so that choosing a layer's path never waits for the GPU
        self.mixes_source = plan.source_weights.ne(0).any(dim=1).tolist()  # (N,) Ã takes source columns
        self.scales_target = plan.target_weights.ne(1).any(dim=1).tolist()  # (N,) Ã rescales target columns
        self.self_replace = plan.self_replace.tolist()
        self.mix = (plan.mapper[None] * plan.source_weights[:, None, :]).to(device)  # (N, T_s, T_t) R diag(s_i)
        self.target_weights = plan.target_weights.to(device)  # (N, T_t) u_i
        # made on first use, when the UNet batch size is known
        self.value_scales: Tensor | None = None  # (N, B, 1, T, 1): u_i on the target's row, 1 elsewhere
        self.self_rows: Tensor | None = None  # (B,) the batch order with the target's row pointing at the source
        # (source, target) rows: a slice (no copy) when they are neighbours, as the engine lays them out
        adjacent = target_index == source_index + 1
        self.pair = slice(source_index, target_index + 1) if adjacent else torch.tensor([source_index, target_index], device=device)
        # this step's raw cross-attention of (source, target), summed per resolution: the local blend's input
        self.step_sums: dict[tuple[int, int], Tensor] = {}  # (h, w) -> (2, h*w, T)
        self.step_counts: dict[tuple[int, int], int] = {}
        # (source, Ã) summed over the steps before this one: the maps shown
        self.run_sums: dict[tuple[int, int], Tensor] = {}  # (h, w) -> (2, h*w, T)
        self.run_counts: dict[tuple[int, int], int] = {}

    def begin_step(self, i: int, t: Tensor) -> None:
        self.fold_step()
        self.step = i

    def edits(self, layer: Attention) -> bool:
        return layer.is_cross_attention or any(self.self_replace)

    def attend(self, layer: Attention, query: Tensor, key: Tensor, value: Tensor, is_cross: bool) -> Tensor:
        if is_cross:
            return self._cross(layer, query, key, value)
        if self.self_replace[self.step] and self._within_self_layers(query.shape[2]):
            rows = self._self_rows(query)
            return F.scaled_dot_product_attention(query[rows], key[rows], value)  # A_t := A_s
        return F.scaled_dot_product_attention(query, key, value)

    def _self_rows(self, query: Tensor) -> Tensor:
        if self.self_rows is None or len(self.self_rows) != query.shape[0]:
            rows = torch.arange(query.shape[0])
            rows[self.target_index] = self.source_index
            self.self_rows = rows.to(query.device)
        return self.self_rows

    def _within_self_layers(self, n_positions: int) -> bool:
        h, w = self.latent_size
        return n_positions <= (h * self.plan.self_max_fraction) * (w * self.plan.self_max_fraction) + 1e-6

    def _cross(self, layer: Attention, query: Tensor, key: Tensor, value: Tensor) -> Tensor:
        i, s, t = self.step, self.source_index, self.target_index
        self._record(layer, query, key)
        scaled = value * self._value_scales(value)[i] if self.scales_target[i] else value  # diag(u_i) V_t on the target's row
        output = F.scaled_dot_product_attention(query, key, scaled)  # every element as usual; target: A_t diag(u_i) V_t
        if self.mixes_source[i]:
            from_source = self.mix[i].to(value) @ value[t : t + 1]  # R diag(s_i) V_t  (1, H, T_s, d)
            # + A_s R diag(s_i) V_t, batched (4-D) so that SDPA takes its fused kernel, not the math path
            output[t] += F.scaled_dot_product_attention(query[s : s + 1], key[s : s + 1], from_source)[0]
        return output

    def _value_scales(self, value: Tensor) -> Tensor:
        if self.value_scales is None or self.value_scales.shape[1] != value.shape[0]:
            scales = torch.ones(len(self.target_weights), value.shape[0], 1, value.shape[2], 1, device=value.device)
            scales[:, self.target_index, 0, :, 0] = self.target_weights
            self.value_scales = scales.to(value.dtype)
        return self.value_scales

    def _record(self, layer: Attention, query: Tensor, key: Tensor) -> None:
        """Add this layer's head-mean maps of (source, target) to this step's sums of its resolution."""
        with torch.no_grad():
            probabilities = head_mean_probabilities(query[self.pair], key[self.pair], layer.scale)  # (2, N, T)
        size = map_size(self.latent_size, probabilities.shape[1])
        if size in self.step_sums:
            self.step_sums[size] += probabilities
            self.step_counts[size] += 1
        else:
            self.step_sums[size] = probabilities
            self.step_counts[size] = 1

    def _fused(self, sums: Tensor) -> Tensor:
        """(2, N, T) maps of (source, target) at this step -> (source, Ã): the target as the target image used it."""
        i = self.step
        if not (self.mixes_source[i] or self.scales_target[i]):
            return sums  # Ã = A_t
        fused = sums[0] @ self.mix[i].float() + sums[1] * self.target_weights[i].float()
        return torch.stack([sums[0], fused])

    def fold_step(self) -> None:
        """Add this step's maps to the running sums shown (idempotent: the step's sums are consumed)."""
        for size, sums in self.step_sums.items():
            if size in self.run_sums:
                self.run_sums[size] += self._fused(sums)
                self.run_counts[size] += self.step_counts[size]
            else:
                self.run_sums[size] = self._fused(sums)
                self.run_counts[size] = self.step_counts[size]
        self.step_sums, self.step_counts = {}, {}

    def means(self) -> tuple[dict[tuple[int, int], Tensor], dict[tuple[int, int], Tensor]]:
        """The maps shown, (source, target), each (h, w) -> (h*w, T): the mean over layers and steps so far."""
        self.fold_step()
        means = {size: sums / self.run_counts[size] for size, sums in self.run_sums.items()}
        return {size: m[0] for size, m in means.items()}, {size: m[1] for size, m in means.items()}

    @property
    def stored_bytes(self) -> int:
        """Memory held for maps: running sums of both images and this step's sums, per resolution only."""
        return sum(t.numel() * t.element_size() for t in [*self.run_sums.values(), *self.step_sums.values()])

    def step_maps(self, columns: Tensor) -> Tensor:
        """This step's attention of the selected columns, per image: columns (2, T) 0/1 for (source,
        target) -> (2, h, w) at latent size, the mean over layers of every resolution (bilinear)."""
        upsampled = []
        for (h, w), sums in self.step_sums.items():
            selected = torch.bmm(self._fused(sums), columns[:, :, None].to(sums)) / self.step_counts[(h, w)]  # (2, N, 1)
            upsampled.append(F.interpolate(selected.view(2, 1, h, w), size=self.latent_size, mode="bilinear",
                                           align_corners=False))
        return torch.stack(upsampled).mean(dim=0)[:, 0]


# --------------------------------------------------------------------------------------------
# Local blend


def local_blend_mask(word_maps: Tensor, threshold: float) -> tuple[Tensor, Tensor]:
    """Prompt-to-prompt's LocalBlend mask from (2, h, w) word attention of (source, target):
    a 3x3 max-pool (so the mask covers the object's edge), each image's map divided by its max,
    thresholded, and the union of both (the old object's place and the new one's).
    Returns (soft (h, w) in [0, 1], binary (h, w) bool)."""
    pooled = F.max_pool2d(word_maps[:, None].float(), kernel_size=3, stride=1, padding=1)[:, 0]  # (2, h, w)
    peaks = pooled.flatten(1).amax(dim=1).clamp_min(torch.finfo(torch.float32).tiny)
    normalised = pooled / peaks[:, None, None]
    return normalised.amax(dim=0), (normalised > threshold).any(dim=0)


def blend_latents(x: Tensor, mask: Tensor, source: int = 0, target: int = 1) -> Tensor:
    """x (B, C, h, w): the target image keeps the source's latents outside the bool mask (h, w), exactly
    (P2P's x_s + m (x_t - x_s) with a binary m, without its rounding)."""
    blended = x.clone()
    blended[target] = torch.where(mask.to(x.device), x[target], x[source])
    return blended

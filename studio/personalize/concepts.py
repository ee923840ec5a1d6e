"""Loaded concepts (LoRAs, embeddings, Custom Diffusion and DreamBooth weights) and their activation per job.

    engine.concepts.load("runs/star-lora")            # -> ConceptInfo(name="star", kind="lora", ...)
    engine.generate(GenerateSpec("a red star", concepts=(ConceptUse("star", 0.8),)))

Loading changes the resident model once, so that every job can use a concept and none uses it unless asked:
- LoRA (Hu et al. 2021 eq. 3, h = W0 x + (alpha/r) B A x): diffusers' `load_lora_into_unet` /
  `load_lora_into_text_encoder` wrap the projections in peft LoRA layers under an adapter of the concept's own,
  disabled between jobs (a disabled peft layer returns `base_layer(x)`, bit for bit). peft wraps Linear layers, so
  the studio's attention processors (P2P, attention capture, the IP-Adapter wrapper) run unchanged over them.
- Embeddings (Textual Inversion, Gal et al. 2022 eq. 2; Custom Diffusion's modifier token V*): a new word becomes new
  tokenizer token(s) (`add_tokens`, `resize_token_embeddings`; a vector per token, "<w>", "<w>_1", ... for
  multi-vector files, which `expansions()` spells out in prompts); a word the tokenizer already holds as one token
  (the shapes model's reserved star / heart) keeps its token. The learned rows are written only while a job uses
  the concept; new tokens' rows are zero between jobs.
- Parameter replacements (Custom Diffusion's cross-attention W_k, W_v, Kumari et al. 2023 section 3.1; a DreamBooth
  UNet, Ruiz et al. 2023): W = W0 + scale (W1 - W0) swapped in per job and W0 copied back after. Diffusers'
  CustomDiffusionAttnProcessor is not used: it replaces the attention processors (diffusers #8872), which the
  studio's own processors (P2P, capture, IP-Adapter) are.

Activation is explicit and per job: `JobHost(engine, uses)` is the engine as one job sees it. Its `exclusive`
applies exactly `uses` after the job has taken the engine's lock and restores the base in a `finally` (the lock is
what makes this thread-safe: Gradio runs each job's generator on its own threads, but only the lock holder touches
the model), and its `tokenize` refuses a word of a loaded concept the job does not use. Loading and unloading take
the same lock.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from diffusers import StableDiffusionPipeline
from diffusers.utils.peft_utils import (
    delete_adapter_layers,
    recurse_remove_peft_layers,
    set_adapter_layers,
    set_weights_and_activate_adapters,
)
from peft import inject_adapter_in_model, set_peft_model_state_dict
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from studio.conditioning import Tokens
from studio.costs import JobCost
from studio.errors import InvalidInputError, ModelLoadError
from studio.events import CancelToken, Event
from studio.models import LoadedModel
from studio.specs import ConceptUse, check_concepts

if TYPE_CHECKING:
    from studio.engine import Engine
    from studio.personalize.files import ConceptFile

# ConceptFile.lora key prefixes: the LoadedModel parts a LoRA adapts
LORA_PARTS = ("unet", "text_encoder", "text_encoder_2")


@dataclass(frozen=True)
class ConceptInfo:
    """What the studio shows of a loaded concept: its name (what specs use), kind ("lora", "embedding",
    "custom-diffusion", "dreambooth"), the file's layout, its prompt words, the file's short sha256 and where it is."""

    name: str
    kind: str
    layout: str
    words: tuple[str, ...]
    hash: str
    path: Path
    notes: tuple[str, ...] = ()  # what the reader wants the user to know ("this file does not store its word: ...")


@dataclass
class _EmbeddingRows:
    """One word's learned vectors and the token ids they go into (one per vector) in one text encoder."""

    encoder: str  # "text_encoder" or "text_encoder_2"
    token_ids: list[int]
    rows: torch.Tensor  # (n, dim) on the model's device and dtype


@dataclass
class _Concept:
    info: ConceptInfo
    adapter: str | None = None  # the peft adapter name of a LoRA
    embeddings: list[_EmbeddingRows] = field(default_factory=list)
    parameters: dict[str, torch.Tensor] = field(default_factory=dict)  # UNet parameter name -> W1
    tokens: dict[str, list[str]] = field(default_factory=dict)  # word -> its tokens, in order


class ConceptRegistry:
    """The concepts loaded into one engine's model (engine.concepts). `hold` is the engine's lock (FairLock.hold):
    loading changes the resident modules, so it waits for the running job."""

    def __init__(self, model: LoadedModel, hold: Callable[[CancelToken | None], AbstractContextManager[None]]):
        self._model = model
        self._hold = hold
        self._concepts: dict[str, _Concept] = {}
        self._added_tokens: set[str] = set()  # tokens this registry added to the tokenizer (kept after unload)
        self._adapters = 0

    # ----------------------------------------------------------------------------------------------
    # what is loaded

    def loaded(self) -> list[ConceptInfo]:
        return [concept.info for concept in self._concepts.values()]

    def info(self, name: str) -> ConceptInfo:
        return self._concept(name).info

    def __bool__(self) -> bool:
        return bool(self._concepts)

    def word_owners(self) -> dict[str, str]:
        """Prompt word -> the loaded concept it belongs to."""
        return {word: concept.info.name for concept in self._concepts.values() for word in concept.info.words}

    def expansions(self) -> dict[str, str]:
        """Multi-vector embedding words -> the tokens a prompt spells them as ("<w>" -> "<w> <w>_1 <w>_2")."""
        return {word: " ".join(tokens) for concept in self._concepts.values()
                for word, tokens in concept.tokens.items() if len(tokens) > 1}

    def records(self, uses: Sequence[ConceptUse]) -> list[dict[str, Any]]:
        """Result.settings["concepts"]: name, kind, hash and scale of each use (studio.jobs.reproduction_record)."""
        return [{"name": use.name, "kind": self._concept(use.name).info.kind, "hash": self._concept(use.name).info.hash,
                 "scale": use.scale} for use in uses]

    def resolve(self, uses: Sequence[ConceptUse]) -> tuple[ConceptUse, ...]:
        """`uses` checked: scales in range, every name loaded (InvalidInputError naming the loaded ones)."""
        uses = tuple(uses)
        check_concepts(uses)
        for use in uses:
            self._concept(use.name)
        return uses

    def _concept(self, name: str) -> _Concept:
        if name not in self._concepts:
            loaded = ", ".join(self._concepts) or "none"
            raise InvalidInputError(f"No concept named {name!r} is loaded (loaded: {loaded}): load its file in the "
                                    "Personalize tab or with --lora / --embedding.")
        return self._concepts[name]

    # ----------------------------------------------------------------------------------------------
    # load / unload

    def load(self, path: str | Path, name: str | None = None, token: str | None = None) -> ConceptInfo:
        """Load a trained folder or a user's LoRA / embedding / Custom Diffusion file (studio.personalize.files reads
        it and checks that it fits the model: ModelLoadError otherwise). `name` defaults to the concept's first word
        (a file's stem when it names none); `token` is the prompt word of an embedding file that does not say it
        (kohya's emb_params). The same file loaded twice is the same concept."""
        from studio.personalize.files import check_fits, read_concept

        concept_file = read_concept(Path(path), token)
        for concept in self._concepts.values():
            if concept.info.hash == concept_file.sha256 and concept.info.kind == concept_file.kind:
                return concept.info
        check_fits(concept_file, self._model)
        name = name or (concept_file.words[0] if concept_file.words else _stem(concept_file.path))
        if name in self._concepts:
            raise InvalidInputError(f"A concept named {name!r} is loaded already: unload it first or give this one "
                                    "another name.")
        owners = self.word_owners()
        if taken := [word for word in concept_file.words if word in owners]:
            raise InvalidInputError(f"The word {taken[0]!r} belongs to the loaded concept {owners[taken[0]]!r}: unload "
                                    "it first, or train this concept with another word.")
        info = ConceptInfo(name, concept_file.kind, concept_file.layout, tuple(concept_file.words), concept_file.sha256,
                           concept_file.path, tuple(concept_file.notes))
        with self._hold(None):
            concept = _Concept(info)
            if concept_file.lora:
                concept.adapter = self._load_lora(concept_file)
            for word, vectors in concept_file.embeddings.items():
                concept.tokens[word], rows = self._add_word(word, vectors, concept_file.embeddings_2.get(word))
                concept.embeddings.extend(rows)
            model = self._model
            concept.parameters = {key: value.to(model.device, model.dtype)
                                  for key, value in concept_file.parameters.items()}
            _resolve_parameters(model, {k: v.shape for k, v in concept.parameters.items()})  # fails here, not in a job
            self._concepts[name] = concept
        return info

    def unload(self, name: str) -> None:
        """Remove a concept: its LoRA adapter is deleted (the last one's peft layers too, giving back the plain
        modules), its weights dropped (its tokens stay in the tokenizer with zero rows, unused: the tokenizer cannot
        forget a token; the same word loaded again reuses them)."""
        concept = self._concept(name)
        with self._hold(None):
            if concept.adapter is not None:
                for module in self._lora_modules():
                    if _has_adapter(module, concept.adapter):
                        delete_adapter_layers(module, concept.adapter)
                        getattr(module, "peft_config", {}).pop(concept.adapter, None)  # peft's own injection keeps it
                    if _has_lora_layers(module) and not any(_has_adapter(module, c.adapter) for c in self._concepts.values()
                                                            if c.adapter is not None and c is not concept):
                        recurse_remove_peft_layers(module)
                        if hasattr(module, "peft_config"):
                            del module.peft_config
            del self._concepts[name]

    def _load_lora(self, concept_file: ConceptFile) -> str:
        """Wrap the model's projections in a new peft adapter holding the file's LoRA, disabled until a job uses it."""
        self._adapters += 1
        adapter = f"concept_{self._adapters}"  # peft names become module keys: the user's name may hold dots
        state = concept_file.lora
        prefixes = {key.split(".", 1)[0] for key in state}
        model = self._model
        if not prefixes <= set(LORA_PARTS) or any(getattr(model, part) is None for part in prefixes):
            raise ModelLoadError(f"{concept_file.path.name}: LoRA keys for {', '.join(sorted(prefixes))}, but "
                                 f"{model.name} has unet, text_encoder{', text_encoder_2' if model.text_encoder_2 else ''}.")
        try:
            if "unet" in prefixes:  # rank and alpha per layer travel in the metadata (studio.personalize.files)
                StableDiffusionPipeline.load_lora_into_unet(state, None, model.unet, adapter_name=adapter,
                                                            metadata=concept_file.lora_metadata)
            for prefix in ("text_encoder", "text_encoder_2"):
                if prefix in prefixes:
                    _load_text_encoder_lora(getattr(model, prefix), concept_file, prefix, adapter)
        except (ValueError, KeyError, RuntimeError) as error:
            raise ModelLoadError(f"{concept_file.path.name} does not fit {model.name}'s layers: {error}") from error
        for module in self._lora_modules():
            set_adapter_layers(module, enabled=False)  # loading activates the adapter: off until a job asks for it
            module.requires_grad_(False)
        return adapter

    def _add_word(self, word: str, vectors: torch.Tensor,
                  vectors_2: torch.Tensor | None) -> tuple[list[str], list[_EmbeddingRows]]:
        """The tokens of an embedding word (its own single token where the tokenizer has one, new ones otherwise)
        and its rows per text encoder (`vectors_2`: SDXL's second encoder's, clip_g)."""
        model = self._model
        tokenizer = model.tokenizer
        tokens = [word] + [f"{word}_{i}" for i in range(1, vectors.shape[0])]
        new = [t for t in tokens if not _single_token(tokenizer, t) and t not in self._added_tokens]
        if new:
            tokenizer.add_tokens(new)
            if model.tokenizer_2 is not None:
                model.tokenizer_2.add_tokens(new)
            self._added_tokens.update(new)
        parts = [("text_encoder", model.text_encoder, model.tokenizer, vectors)]
        if model.text_encoder_2 is not None and vectors_2 is not None:  # check_fits refuses SDXL files without it
            parts.append(("text_encoder_2", model.text_encoder_2, model.tokenizer_2, vectors_2))
        rows: list[_EmbeddingRows] = []
        for encoder_name, encoder, word_tokenizer, part in parts:
            if len(word_tokenizer) > encoder.get_input_embeddings().weight.shape[0]:
                old_rows = encoder.get_input_embeddings().weight.shape[0]
                encoder.resize_token_embeddings(len(word_tokenizer), mean_resizing=False)
                with torch.no_grad():
                    encoder.get_input_embeddings().weight[old_rows:] = 0  # unused between jobs
                encoder.requires_grad_(False)
            ids = word_tokenizer.convert_tokens_to_ids(tokens)
            rows.append(_EmbeddingRows(encoder_name, ids, part.to(model.device, model.dtype)))
        return tokens, rows

    def _lora_modules(self) -> list[nn.Module]:
        model = self._model
        return [m for m in (model.unet, model.text_encoder, model.text_encoder_2) if m is not None]

    # ----------------------------------------------------------------------------------------------
    # activation (JobHost.exclusive calls this with the engine's lock held)

    def running(self, uses: Sequence[ConceptUse], job: Iterator[Event]) -> Iterator[Event]:
        """`job` with exactly `uses` applied, the base model restored after (also when it fails or is cancelled)."""
        restore = self._apply(uses)
        try:
            yield from job
        finally:
            restore()

    @torch.no_grad()
    def _apply(self, uses: Sequence[ConceptUse]) -> Callable[[], None]:
        model = self._model
        concepts = [(self._concept(use.name), use.scale) for use in uses]
        undo: list[Callable[[], None]] = []
        try:
            loras = [(c.adapter, scale) for c, scale in concepts if c.adapter is not None]
            if loras:
                for module in self._lora_modules():
                    if _has_lora_layers(module):
                        set_weights_and_activate_adapters(module, [a for a, _ in loras], [s for _, s in loras])
                        set_adapter_layers(module, enabled=True)
                        module.requires_grad_(False)  # peft's set_adapter marks the active adapters trainable
                        undo.append(lambda module=module: set_adapter_layers(module, enabled=False))
            for concept, _ in concepts:
                for embedding in concept.embeddings:
                    weight = getattr(model, embedding.encoder).get_input_embeddings().weight
                    ids = torch.tensor(embedding.token_ids, device=weight.device)
                    base_rows = weight[ids].clone()
                    weight[ids] = embedding.rows
                    undo.append(lambda weight=weight, ids=ids, base_rows=base_rows: weight.index_copy_(0, ids, base_rows))
            tuned: dict[str, list[tuple[torch.Tensor, float]]] = {}
            for concept, scale in concepts:
                for key, value in concept.parameters.items():
                    tuned.setdefault(key, []).append((value, scale))
            if tuned:
                parameters = _resolve_parameters(model, {key: v[0][0].shape for key, v in tuned.items()})
                for key, versions in tuned.items():
                    parameter = parameters[key]
                    base = parameter.detach().clone()
                    if len(versions) == 1:  # lerp at 1 is W1 exactly
                        parameter.copy_(torch.lerp(base, versions[0][0], versions[0][1]))
                    else:
                        parameter.copy_(base + sum(scale * (value - base) for value, scale in versions))
                    undo.append(lambda parameter=parameter, base=base: parameter.copy_(base))
        except BaseException:
            _undo_all(undo)
            raise
        return lambda: _undo_all(undo)


class JobHost:
    """The engine as one job sees it (a studio.jobs.ModelHost): the same model, lock and encoders, with `uses`
    applied while the job holds the model, and prompt words of loaded concepts the job does not use refused.
    Everything else is the engine's own (attribute access falls through to it)."""

    def __init__(self, engine: Engine, uses: tuple[ConceptUse, ...]):
        self._engine = engine
        self._uses = uses

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    def concept_records(self) -> list[dict[str, Any]]:
        return self._engine.concepts.records(self._uses)

    def tokenize(self, prompt: str, label: str = "") -> Tokens:
        tokens = self._engine.tokenize(prompt, label)
        used = {use.name for use in self._uses}
        for word, owner in self._engine.concepts.word_owners().items():
            if owner not in used and word in tokens.words:
                where = f"{label}: " if label else ""
                raise InvalidInputError(
                    f"{where}{word!r} is the word of concept {owner!r}, which this job does not use: load it in the "
                    f"Personalize tab or add --embedding / --lora (or remove the word)."
                )
        return tokens

    def exclusive(self, job: Iterator[Event], total_steps: int, cancel: CancelToken | None, workload: str,
                  cost: JobCost) -> Iterator[Event]:
        return self._engine.exclusive(self._engine.concepts.running(self._uses, job), total_steps, cancel, workload,
                                      cost)


def _undo_all(undo: list[Callable[[], None]]) -> None:
    with torch.no_grad():
        for step in reversed(undo):
            step()


def _load_text_encoder_lora(encoder: nn.Module, concept_file: ConceptFile, part: str, adapter: str) -> None:
    """A text encoder's LoRA layers as a peft adapter: peft's own inject_adapter_in_model with the file's per-layer
    ranks and alphas (studio.personalize.files.peft_adapter), not diffusers' load_lora_into_text_encoder, which calls
    transformers' load_adapter, and transformers 5 refuses that below peft 0.22."""
    from studio.personalize.files import peft_adapter

    config, layers = peft_adapter(concept_file, part)
    inject_adapter_in_model(config, encoder, adapter_name=adapter)
    loaded = set_peft_model_state_dict(encoder, layers, adapter_name=adapter)
    if unexpected := [key for key in loaded.unexpected_keys if "lora_" in key]:
        raise ModelLoadError(f"LoRA layers for modules the {part} lacks: {', '.join(unexpected[:4])}")


def _resolve_parameters(model: LoadedModel, shapes: Mapping[str, torch.Size]) -> dict[str, nn.Parameter]:
    """The parameter each key names (UNet names; `text_encoder.<name>` for a DreamBooth text encoder), also where
    peft has wrapped its Linear (".to_k.weight" is then ".to_k.base_layer.weight"); ModelLoadError naming the first
    key the model lacks or holds in another shape."""
    named = {**dict(model.unet.named_parameters()),
             **{f"text_encoder.{name}": value for name, value in model.text_encoder.named_parameters()}}
    found: dict[str, nn.Parameter] = {}
    for key, shape in shapes.items():
        module, _, leaf = key.rpartition(".")
        parameter = named.get(key, named.get(f"{module}.base_layer.{leaf}"))
        if parameter is None:
            raise ModelLoadError(f"The concept's weight {key!r} names no parameter of {model.name}.")
        if tuple(parameter.shape) != tuple(shape):
            raise ModelLoadError(f"The concept's weight {key!r} has shape {tuple(shape)}, the UNet's "
                                 f"{tuple(parameter.shape)}.")
        found[key] = parameter
    return found


def _single_token(tokenizer: Any, word: str) -> bool:
    """Whether `word` is one token of the tokenizer's own (the shapes model's reserved words, a word added before)."""
    ids = tokenizer(word, add_special_tokens=False).input_ids
    return len(ids) == 1 and ids[0] != tokenizer.unk_token_id and tokenizer.convert_ids_to_tokens(ids[0]) in (word, f"{word}</w>")


def _has_lora_layers(module: nn.Module) -> bool:
    return any(isinstance(m, BaseTunerLayer) for m in module.modules())


def _has_adapter(module: nn.Module, adapter: str) -> bool:
    return any(isinstance(m, BaseTunerLayer) and adapter in getattr(m, "lora_A", {}) for m in module.modules())


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".kohya.safetensors", ".safetensors", ".pt", ".bin", ".ckpt"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name

"""The engine owns one loaded model and turns (media, question) into prompts, and prompts
into answers through the generation core (scheduler.py).

    engine = Engine.load("./LLaVA-NeXT-Video-7B-hf")
    prompt = engine.prepare([load_media("clip.mp4")], "why is this funny?")
    answer = engine.answer(prompt, engine.sampling())
    for piece in answer:
        print(piece, end="")
    answer.result.timings  # tokens, stop reason, timings: the request's own

Many requests at once: ``core = engine.core(slots=8)``, ``core.submit(engine.request(…))``
for each, then ``core.step()`` until they are done (what ``llava batch`` does).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch

from .checkpoint import ST_ITEMSIZE
from .errors import ModelError, PromptError
from .families import Family, MediaInput, family_for
from .generate import NonFiniteLogits, Sampling, eos_ids
from .loading import Checkpoint, load_weights, resolve_device, resolve_dtype
from .nn.attention import resolve_backend
from .nn.quant import Quantizer
from .validate import available_ram, gigabytes

# Prompt positions per prefill pass: bounds the activations of a long video prompt
# (a 32-frame NeXT-Video prompt is ~4,700 positions) at little cost in speed.
DEFAULT_PREFILL_CHUNK = 1024
from .media import Media
from .prompt import (BUILTIN_TEMPLATES, build_messages, builtin_template_for, compile_chat_template,
                     expand_placeholders, load_chat_template, render_compiled, with_time_instructions)
from .scheduler import CACHE_GRANULE, Generation, Request, Result, Scheduler, Timings  # noqa: F401 (Timings: public here too)
from .tokenizer import Tokenizer


@dataclass
class Encoded:
    """One image or video, preprocessed and run through the vision side: its embeddings
    can fill the placeholders of any number of prompts without encoding it again."""

    media: Media
    item: MediaInput
    features: torch.Tensor  # (item.num_tokens, text hidden)


@dataclass
class Prepared:
    """A prompt ready for the model: token ids with placeholders expanded, and the
    preprocessed media whose embeddings fill those placeholders, in prompt order."""

    text: str
    input_ids: list[int]
    items: list[MediaInput]
    media: list[Media] = field(default_factory=list)
    rope_factor: float = 1.0  # linear RoPE factor this prompt runs with
    # Set when --long-video stretched RoPE for this prompt: the one-line notice saying so.
    stretch_notice: str | None = None
    context: int = 0  # positions available to prompt + answer
    # Embeddings already computed for ``items`` (from ``Engine.encode``), in the same
    # order; None: ``embed`` encodes the items itself.
    features: list[torch.Tensor] | None = None


@dataclass
class EngineStats:
    """Counters over an engine's life; tests use them to prove work is not repeated."""

    media_encoded: int = 0  # images and videos run through the vision tower


class Engine:
    def __init__(self, checkpoint: Checkpoint, family: Family, model: torch.nn.Module, tokenizer: Tokenizer,
                 template: str, device: torch.device, dtype: torch.dtype) -> None:
        self.checkpoint = checkpoint
        self.family = family
        self.model = model
        self.tokenizer = tokenizer
        self.template = template
        self._compiled_template = compile_chat_template(template)
        # apply_chat_template hands templates the tokenizer's special tokens; some use them.
        self._template_vars = {k: v for k, v in (("bos_token", tokenizer.bos_token),
                                                 ("eos_token", tokenizer.eos_token)) if v is not None}
        self.device = device
        self.dtype = dtype
        # LLaVA-Video's time instruction before each video question (what the checkpoint's
        # config declares, unless Engine.load was told otherwise).
        self.time_instruction = family.wants_time_instruction(None)
        self.load_s = 0.0  # seconds Engine.load took
        self.stats = EngineStats()
        self._core: Scheduler | None = None
        # Called after each image or video is encoded (the CLI's --verbose notice).
        self.on_encode: Callable[[Media | None, MediaInput], None] | None = None
        self.stop_ids = eos_ids(checkpoint.generation.get("eos_token_id"),
                                (checkpoint.config.get("text_config") or {}).get("eos_token_id"),
                                checkpoint.config.get("eos_token_id"))
        if not self.stop_ids and tokenizer.eos_token_id is not None:
            self.stop_ids = frozenset({tokenizer.eos_token_id})
        self._check_placeholders()

    @classmethod
    def load(cls, folder: str | Path | Checkpoint, *, device: str | None = None, dtype: str | None = None,
             attn: str | None = "auto", family: Family | None = None, quantize: str | None = None,
             compile: bool = False, prefill_chunk: int = DEFAULT_PREFILL_CHUNK,
             time_instruction: bool | None = None) -> "Engine":
        """Load a model folder (or an already opened Checkpoint and its Family).

        ``attn``: auto | sdpa | flash | eager. ``quantize``: None | "4bit" | "4bit-dq" |
        "8bit" (bitsandbytes; the language model's linear layers only). ``compile``:
        torch.compile the decode step. ``prefill_chunk``: prompt positions per prefill
        pass (0: the whole prompt at once). ``time_instruction``: LLaVA-Video's time
        instruction before video questions, on or off (None: as config.json declares;
        only families that take it, OneVision's, ever get it).
        """
        started = time.perf_counter()
        checkpoint = folder if isinstance(folder, Checkpoint) else Checkpoint.open(folder)
        family = family or family_for(checkpoint)
        tokenizer = Tokenizer.from_folder(checkpoint.folder)
        text_type = (family.config.get("text_config") or {}).get("model_type", "llama")
        template = load_chat_template(checkpoint.folder) or BUILTIN_TEMPLATES[builtin_template_for(
            family.name, text_type, family.text_config.vocab_size, tokenizer.bos_token)]
        torch_device = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, torch_device)
        backend = resolve_backend(attn, torch_device, torch_dtype)
        quantizer = Quantizer.create(quantize, torch_device, torch_dtype) if quantize not in (None, "", "none") \
            else None
        shards = checkpoint.shard_files()
        check_memory(checkpoint, shards, torch_device, torch_dtype, None if quantizer is None else quantizer.mode)
        with torch.device("meta"):
            model = family.build()
        load_weights(model, shards, device=torch_device, dtype=torch_dtype, quantizer=quantizer,
                     headers=checkpoint.headers)
        model.text.rotary.reset(torch_device)
        model.eval()
        engine = cls(checkpoint, family, model, tokenizer, template, torch_device, torch_dtype)
        engine.time_instruction = family.wants_time_instruction(time_instruction)
        engine.set_attention(backend)
        engine.set_prefill_chunk(prefill_chunk)
        if compile:
            model.text.compile_decode()
        engine.load_s = time.perf_counter() - started
        return engine

    @property
    def attention(self) -> str:
        return self.model.text.attn_backend

    def set_attention(self, backend: str) -> None:
        """Switch every attention layer (vision and text) to a resolved backend."""
        for module in self.model.modules():
            if hasattr(module, "attn_backend"):
                module.attn_backend = backend

    def set_prefill_chunk(self, positions: int) -> None:
        if positions < 0:
            raise ModelError("the prefill chunk must be >= 0 (0: the whole prompt at once)")
        self.model.text.prefill_chunk = positions

    def _check_placeholders(self) -> None:
        for kind, token_id in self.family.token_ids().items():
            found = self.tokenizer.token_to_id(f"<{kind}>")
            if found != token_id:
                raise ModelError(f"tokenizer maps <{kind}> to {found}, but config.json expects {token_id}")

    # -- prompt ------------------------------------------------------------------------
    def prepare(self, media: Sequence[Media], question: str, system: str | None = None, *,
                long_video: bool = False, encoded: Sequence[Encoded] | None = None) -> Prepared:
        """The prompt for one question about ``media``. With ``encoded`` (from ``encode``,
        for the same media) the media is not preprocessed or encoded again."""
        if encoded is not None:
            media = [e.media for e in encoded]
            items = [e.item for e in encoded]
        else:
            items = self.family.prepare(media)
        messages = build_messages(question, [m.kind for m in media], system)
        prepared = self.prepare_messages(messages, items, long_video=long_video, media=media)
        prepared.media = list(media)
        if encoded is not None:
            prepared.features = [e.features for e in encoded]
        return prepared

    def prepare_messages(self, messages: Sequence[Mapping[str, Any]], items: Sequence[MediaInput], *,
                         long_video: bool = False, add_generation_prompt: bool = True,
                         media: Sequence[Media] | None = None) -> Prepared:
        """Render a whole conversation (chat-template messages whose media parts match
        ``items`` in order) to token ids with the placeholders expanded, checked against
        the context. ``media``: the decoded media of those parts, in the same order; with
        ``time_instruction`` on, each message holding a video gets LLaVA-Video's time
        instruction before its text (from the frames' timestamps), here and nowhere else,
        so a conversation's stored text stays the user's."""
        if self.time_instruction and media:
            messages = with_time_instructions(messages, media)
        text = render_compiled(self._compiled_template, messages, add_generation_prompt=add_generation_prompt,
                               **self._template_vars)
        ids = self.tokenizer.encode(text)
        counts: dict[int, list[int]] = {}
        for token_id in self.family.token_ids().values():
            counts[token_id] = []
        for item in items:
            counts[item.placeholder_id].append(item.num_tokens)
        names = {token_id: f"<{kind}>" for kind, token_id in self.family.token_ids().items()}
        ids = expand_placeholders(ids, counts, names)
        prepared = Prepared(text=text, input_ids=ids, items=list(items),
                            rope_factor=self.family.text_config.rope_linear_factor,
                            context=self.family.text_config.max_position_embeddings)
        self._fit_context(prepared, long_video)
        return prepared

    def _fit_context(self, prepared: Prepared, long_video: bool) -> None:
        """Leave room for at least one answer token, or say what would fit.

        ``long_video`` stretches the context instead, as the LLaVA-NeXT-Video authors do
        for long videos: positions are compressed by k = ceil(tokens / context) on top of
        the checkpoint's own linear factor, and the context grows k times.
        """
        needed, context = len(prepared.input_ids) + 1, prepared.context
        if needed <= context:
            return
        if long_video:
            stretch = math.ceil(needed / context)
            prepared.rope_factor *= stretch
            prepared.context = context * stretch
            prepared.stretch_notice = (f"--long-video: RoPE stretched to linear factor {prepared.rope_factor:g} "
                                       f"for {len(prepared.input_ids)} prompt tokens")
            return
        message = f"the prompt needs {needed - 1} tokens but the model's context is {context}"
        videos = [item for item in prepared.items if item.kind == "video"]
        if videos:
            fixed = len(prepared.input_ids) - sum(v.num_tokens for v in videos)
            most = max(v.pixels.shape[0] for v in videos)
            fit = max((f for f in range(1, most + 1)
                       if fixed + len(videos) * self.family.video_tokens(f) + 1 <= context), default=0)
            if fit:
                raise PromptError(f"{message}: at most {fit} frames per video fit (use --frames {fit}), "
                                  f"or pass --long-video to stretch the context")
            raise PromptError(f"{message}, even with one frame per video; pass --long-video to stretch it")
        raise PromptError(f"{message}; use a shorter question or fewer images")

    # -- model -------------------------------------------------------------------------
    def encode_item(self, item: MediaInput, media: Media | None = None) -> torch.Tensor:
        """One preprocessed image or video → its embeddings (num_tokens, text hidden)."""
        return self.encode_items([item], [media])[0]

    @torch.inference_mode()
    def encode_items(self, items: Sequence[MediaInput],
                     media: Sequence[Media | None] | None = None) -> list[torch.Tensor]:
        """Preprocessed images and videos → their embeddings, in order. Views of the same
        size (frames, tiles) of all the items go through the vision tower together, in
        passes bounded by its views-per-pass limit (``Family.encode_many``)."""
        media = list(media) if media is not None else [None] * len(items)
        dtype = self.model.text.embed.weight.dtype
        out = [features.to(dtype) for features in self.family.encode_many(self.model, items)]
        for item, features, source in zip(items, out, media):
            if features.shape[0] != item.num_tokens:
                raise ModelError(f"{item.kind} produced {features.shape[0]} features for {item.num_tokens} tokens")
            self.stats.media_encoded += 1
            if self.on_encode is not None:
                self.on_encode(source, item)
        return out

    def encode(self, media: Sequence[Media]) -> list[Encoded]:
        """Preprocess and encode media once, for use in any number of prompts
        (``prepare(..., encoded=...)``)."""
        items = self.family.prepare(media)
        return [Encoded(m, item, f) for m, item, f in zip(media, items, self.encode_items(items, media))]

    @torch.inference_mode()
    def embed(self, prepared: Prepared) -> torch.Tensor:
        """Token embeddings with media features spliced in: (L, hidden). Media without
        features from ``encode`` is encoded here."""
        ids = torch.tensor(prepared.input_ids, device=self.device)
        embeds = self.model.text.embed(ids)
        by_id: dict[int, list[torch.Tensor]] = {}
        media = prepared.media if len(prepared.media) == len(prepared.items) else [None] * len(prepared.items)
        for index, item in enumerate(prepared.items):
            if prepared.features is not None:
                features = prepared.features[index].to(embeds.dtype)
            else:
                features = self.encode_item(item, media[index]).to(embeds.dtype)
            by_id.setdefault(item.placeholder_id, []).append(features)
        for token_id, features in by_id.items():
            mask = ids == token_id
            embeds[mask] = torch.cat(features)
        return embeds

    # -- generation --------------------------------------------------------------------
    def sampling(self, **overrides) -> Sampling:
        return Sampling.resolve(self.checkpoint.generation, **overrides)

    def core(self, slots: int = 1) -> Scheduler:
        """The engine's generation core, with at least ``slots`` rows. One per engine: the
        model has one KV cache, which every front door (ask, chat, batch) shares."""
        core = self._core
        if core is None or (core.slots < slots and not core.busy and not core.reserved):
            core = self._core = Scheduler(self.model.text, slots)
        elif core.slots < slots:
            raise ModelError(f"the generation core is busy with {core.slots} slots; cannot widen it to {slots}")
        return core

    def request(self, prepared: Prepared, sampling: Sampling, **options: Any) -> Request:
        """A generation request for a prepared prompt (its media encoded now unless
        ``prepare`` was given encoded media)."""
        started = time.perf_counter()
        embeds = self.embed(prepared)
        encode_s = time.perf_counter() - started if prepared.features is None else 0.0
        return Request(embeds=embeds, sampling=sampling, stop_ids=self.stop_ids, context=prepared.context,
                       rope_factor=prepared.rope_factor, encode_s=encode_s, **options)

    def answer(self, prepared: Prepared, sampling: Sampling) -> "Answer":
        """One request through the core: its text in pieces as they come (``Answer``)."""
        core = self.core()
        return Answer(self, core, core.submit(self.request(prepared, sampling)))

    @torch.inference_mode()
    def logits(self, prepared: Prepared) -> torch.Tensor:
        """Next-token logits after the whole prompt: (vocab,) float32 (the core's prefill,
        then the request ends at once)."""
        core = self.core()
        sequence = core.submit(self.request(prepared, Sampling(max_new_tokens=1), keep_logits=True))
        for _ in core.run(sequence):
            pass
        return sequence.result.logits


class Answer:
    """One request's answer as text pieces, each final once yielded; ``result`` holds its
    tokens, stop reason and timings (complete once iteration ends). Closing it early, or
    Ctrl-C while it runs, ends the request ("interrupted") and frees its slot."""

    def __init__(self, engine: Engine, core: Scheduler, sequence: Generation) -> None:
        self.engine, self.core, self.sequence = engine, core, sequence

    @property
    def result(self) -> Result:
        return self.sequence.result

    def tokens(self) -> Iterator[int]:
        yield from self.core.run(self.sequence)
        if self.result.error is not None:
            raise NonFiniteLogits(self.result.error)

    def __iter__(self) -> Iterator[str]:
        decoder = self.engine.tokenizer.stream()
        for token in self.tokens():
            piece = decoder.push(token)
            if piece:
                yield piece
        tail = decoder.flush()
        if tail:
            yield tail

    def text(self) -> str:
        return "".join(self)


def weight_bytes(checkpoint: Checkpoint, shards: Sequence[Path], dtype: torch.dtype,
                 quantize: str | None = None) -> int:
    """Bytes the weights take once loaded: from the shards' headers (the true element
    counts), floating-point tensors at ``dtype``'s size, the others as stored; with
    ``quantize`` the language model's linear weights at 4 or 8 bits."""
    from .loading import our_name
    from .nn.quant import _QUANTIZED

    itemsize = torch.empty((), dtype=dtype).element_size()
    total = 0.0
    for shard in shards:
        for entry in checkpoint.header(shard):
            size = ST_ITEMSIZE[entry.dtype]
            per = itemsize if entry.dtype in _FLOAT_CODES else size
            if quantize and entry.dtype in _FLOAT_CODES and entry.name.endswith(".weight"):
                name = our_name(entry.name)
                if name is not None and _QUANTIZED.match(name.removesuffix(".weight")):
                    per = 0.5 if quantize.startswith("4bit") else 1
            total += entry.numel * per
    return int(total)


def check_memory(checkpoint: Checkpoint, shards: Sequence[Path], device: torch.device, dtype: torch.dtype,
                 quantize: str | None = None) -> None:
    """Refuse, before anything is built, weights that cannot fit where they would live.

    The rule: the weights' bytes at the compute dtype (``weight_bytes``) must not exceed
    the memory free on the device: on the CPU MemAvailable (RAM plus reclaimable page
    cache; memory-mapped float32 weights live in that page cache, so they need it just
    the same), lowered to a cgroup limit; on CUDA ``torch.cuda.mem_get_info``. Other
    devices, or memory that cannot be read, are not checked. Activations and the KV
    cache come on top: passing this check is necessary, not sufficient.
    """
    need = weight_bytes(checkpoint, shards, dtype, quantize)
    if device.type == "cuda":
        try:
            free = torch.cuda.mem_get_info(device)[0]
        except RuntimeError:
            return
        where = "GPU memory"
    elif device.type == "cpu":
        free = available_ram()
        where = "RAM"
    else:
        return
    if free is None or need <= free:
        return
    name = str(dtype).removeprefix("torch.")
    if quantize:
        name = f"{name} with --quantize {quantize}"
    if device.type == "cpu" and dtype == torch.float32:
        hint = "try --dtype bfloat16 or a smaller model"
    elif device.type == "cuda" and not quantize:
        hint = "try --quantize 4bit, a smaller model, or --device cpu"
    else:
        hint = "try a smaller model"
    raise ModelError(f"this model needs ~{gigabytes(need)} for its weights in {name} but {gigabytes(free)} "
                     f"of {where} are available; {hint}")


_FLOAT_CODES = ("F64", "F32", "F16", "BF16")

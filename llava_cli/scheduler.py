"""The generation core: many sequences in flight on one model (continuous batching).

In the spirit of llama.cpp's server slots and vLLM's scheduler, on gpt-fast's static KV
cache. The model's cache has ``slots`` rows; each request runs in one row:

* ``submit`` queues a ``Request`` (its prompt embeddings, sampler settings, stop ids,
  RoPE factor) and returns its ``Generation``, whose ``result`` fills in as it runs;
* each ``step`` admits waiting requests into free rows, runs ONE prefill chunk of the
  oldest admitted prompt (so a long video prompt delays the others by a chunk, not by
  its whole prefill), then ONE decode step for every sequence that is generating: all
  rows in one forward, each at its own position and RoPE factor (a --long-video prompt
  shares the step with normal ones), each with its own sampler, seed, stop ids and limit;
* a sequence that ends frees its row at once, and the next request takes it in the next
  step: no sequence waits for the longest answer of a static batch.

The cache is sized from the requests in flight (prompt + answer limit, the largest of
them), not rows × context, and grows (keeping its contents) when a longer one arrives.
A conversation keeps its history in a row it ``reserve``s: its next request starts at the
cached prefix (``Request.start``) and only the new positions are run.

Nothing here is per-call state on the engine: a ``Result`` (tokens, stop reason,
timings) belongs to its request.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Iterator

import numpy as np
import torch

from .generate import NonFiniteLogits, Sampler, Sampling, check_logits
from .nn.text import TextModel

# With a compiled decode step the cache's capacity is rounded up to this, so requests of
# similar length share one buffer and one compiled graph instead of recompiling each time.
# Uncompiled, the cache is exactly as long as needed: every position costs memory.
CACHE_GRANULE = 256
# When a reserved row (a conversation) outgrows the cache, grow by at least this factor,
# so a long chat copies its cache a few times, not at every turn.
GROWTH = 1.5


@dataclass
class Timings:
    load_s: float = 0.0
    encode_s: float = 0.0
    prefill_s: float = 0.0  # admission to the first answer token
    decode_s: float = 0.0  # every answer token after the first
    prompt_tokens: int = 0
    answer_tokens: int = 0
    stop_reason: str = ""  # "stop" (an end-of-turn token), "length" (the token limit), "interrupted"

    @property
    def tokens_per_s(self) -> float | None:
        """Decoding speed after the first token; None when there is nothing to measure."""
        if self.answer_tokens < 2 or self.decode_s <= 0:
            return None
        return (self.answer_tokens - 1) / self.decode_s


@dataclass
class Request:
    """One sequence to generate.

    ``embeds`` (L, hidden) are the prompt positions to run, at positions start…start+L-1
    of the row (``start`` > 0 only in a ``reserve``d row whose first ``start`` positions
    already hold this prompt's prefix). ``context``: positions available to prompt +
    answer (the model's, stretched by --long-video)."""

    embeds: torch.Tensor
    sampling: Sampling
    stop_ids: frozenset[int]
    context: int
    rope_factor: float | None = None  # linear RoPE factor; None: the checkpoint's own
    start: int = 0
    slot: int | None = None  # a reserved row; None: any free one
    keep_logits: bool = False  # keep the first answer token's logits (parity tests)
    encode_s: float = 0.0  # the media encoding this prompt needed, for its timings

    @property
    def prompt_tokens(self) -> int:
        return self.start + self.embeds.shape[0]


@dataclass
class Result:
    tokens: list[int] = field(default_factory=list)  # the answer, stop token excluded
    stop_reason: str = ""  # "stop" | "length" | "interrupted" | "error"
    error: str | None = None
    fed: int = 0  # answer tokens whose keys and values are in the cache (a conversation's history)
    timings: Timings = field(default_factory=Timings)
    logits: torch.Tensor | None = None  # (vocab,) float32, with Request.keep_logits

    @property
    def done(self) -> bool:
        return bool(self.stop_reason)


class Generation:
    """A request in the scheduler: its row, sampler, progress and result."""

    def __init__(self, request: Request, device: torch.device) -> None:
        self.request = request
        self.result = Result()
        self.result.timings.prompt_tokens = request.prompt_tokens
        self.result.timings.encode_s = request.encode_s
        self.sampler = Sampler(request.sampling, device)
        self.row: int | None = None
        self.prefilled = 0  # prompt positions run so far (of request.embeds)
        self.position = request.prompt_tokens  # where the next fed token goes
        # Answer tokens at most: the sampling limit, and what the context leaves.
        self.limit = min(request.sampling.max_new_tokens, request.context - request.prompt_tokens)
        self.pending: int | None = None  # the last token, yielded, not yet fed
        self.new: list[int] = []  # tokens produced since the caller last looked
        self.admitted_at = 0.0
        self.first_at = 0.0

    @property
    def done(self) -> bool:
        return self.result.done

    @property
    def needed(self) -> int:
        """Cache positions this sequence may use."""
        return min(self.request.prompt_tokens + self.limit, self.request.context)

    def take(self) -> list[int]:
        new, self.new = self.new, []
        return new


class Scheduler:
    """Up to ``slots`` sequences in flight on one ``TextModel`` (see the module notes)."""

    def __init__(self, text: TextModel, slots: int = 1) -> None:
        if slots < 1:
            raise ValueError("a scheduler needs at least one slot")
        self.text = text
        self.slots = slots
        self.device = text.embed.weight.device
        self.free = list(range(slots))  # rows no sequence holds, lowest first
        self.reserved: set[int] = set()
        self.rows = slots  # row indices handed out: the shared slots, then reserved rows
        self._spare: list[int] = []  # released reserved rows, for the next reservation
        self.waiting: deque[Generation] = deque()
        self.prefilling: list[Generation] = []  # admitted, prompt not fully run (oldest first)
        self.decoding: list[Generation] = []
        self.steps = 0  # decode steps run (tests: joining mid-flight shares steps)
        self.max_batch = 0  # the most sequences one decode step has advanced together
        self._buffers: tuple | None = None  # see _step_buffers

    # -- requests ----------------------------------------------------------------------
    def submit(self, request: Request) -> Generation:
        if request.embeds.shape[0] < 1:
            raise ValueError("a request needs at least one prompt position to run")
        if request.slot is not None and request.slot not in self.reserved:
            raise ValueError(f"slot {request.slot} is not reserved")
        if request.rope_factor is None:
            request = replace(request, rope_factor=self.text.rotary.factor)
        sequence = Generation(request, self.device)
        if sequence.limit < 1:
            self._finish(sequence, "length")
            return sequence
        self.waiting.append(sequence)
        return sequence

    def reserve(self) -> int:
        """A row kept for one caller (a conversation) until ``release``: its contents
        survive between that caller's requests. Reserved rows come on top of the
        ``slots`` that other requests share, so a conversation never starves them."""
        row = self._spare.pop() if self._spare else self._next_row()
        self.reserved.add(row)
        return row

    def release(self, row: int) -> None:
        if row in self.reserved:
            self.reserved.discard(row)
            self._spare.append(row)

    def _next_row(self) -> int:
        row, self.rows = self.rows, self.rows + 1
        return row

    def cancel(self, sequence: Generation, reason: str = "interrupted", error: str | None = None) -> None:
        """End a sequence now (Ctrl-C, its caller went away, an error): its row is freed."""
        if sequence.done:
            return
        if sequence in self.waiting:
            self.waiting.remove(sequence)
        for group in (self.prefilling, self.decoding):
            if sequence in group:
                group.remove(sequence)
        self._finish(sequence, reason, error)

    @property
    def busy(self) -> bool:
        return bool(self.waiting or self.prefilling or self.decoding)

    @property
    def room(self) -> int:
        """How many more requests the next step would admit (free rows not yet claimed)."""
        return len(self.free) - sum(1 for s in self.waiting if s.request.slot is None)

    # -- running -----------------------------------------------------------------------
    @torch.inference_mode()
    def step(self) -> list[Generation]:
        """Admit, one prefill chunk, one decode step. Returns the sequences that produced
        tokens or ended in this step (their ``take()`` gives the new tokens)."""
        touched: list[Generation] = []
        self._admit()
        if self.prefilling:
            sequence = self.prefilling[0]
            self._guarded(sequence, self._prefill_chunk, touched)
        if self.decoding:
            self._decode(touched)
        self._compact()
        return touched

    def run(self, sequence: Generation) -> Iterator[int]:
        """Step until ``sequence`` ends, yielding its tokens as they come (other sequences
        in flight advance too). Closing the iterator early cancels the sequence."""
        try:
            while not sequence.done:
                self.step()
                yield from sequence.take()
            yield from sequence.take()
        finally:
            if not sequence.done:
                self.cancel(sequence)

    # -- internals ---------------------------------------------------------------------
    def _admit(self) -> None:
        admitted = []
        for sequence in list(self.waiting):
            row = sequence.request.slot
            if row is None:
                if not self.free:
                    continue
                row = self.free.pop(0)
            elif row not in self.reserved or any(s.row == row for s in (*self.prefilling, *self.decoding)):
                continue  # its reserved row is still busy with its previous request
            sequence.row = row
            admitted.append(sequence)
        if not admitted:
            return
        for sequence in admitted:
            self.waiting.remove(sequence)
        try:
            self._fit(admitted)
        except BaseException:
            for sequence in admitted:  # back in the queue, rows back in the pool
                if sequence.request.slot is None:
                    self._free(sequence.row)
                sequence.row = None
            self.waiting.extendleft(reversed(admitted))
            raise
        now = time.perf_counter()
        for sequence in admitted:
            sequence.admitted_at = now
            self.prefilling.append(sequence)

    def _fit(self, admitted: list[Generation]) -> None:
        """Grow the cache to hold every sequence in flight (rows and positions)."""
        text = self.text
        flight = [*self.prefilling, *self.decoding, *admitted]
        needed = max(s.needed for s in flight)
        rows = max(s.row for s in flight) + 1
        if text.compiled:
            # Static shapes: every row from the start, positions in granules.
            rows = max(rows, self.rows)
            context = max(s.request.context for s in flight)
            needed = max(needed, min(context, -(-needed // CACHE_GRANULE) * CACHE_GRANULE))
        current = text.cache
        if current is not None and needed > current.capacity and self.reserved:
            # A conversation's row grows turn by turn: leave it room for a few more.
            context = max(s.request.context for s in flight)
            needed = max(needed, min(context, int(current.capacity * GROWTH)))
        if current is not None and not self.prefilling and not self.decoding and not self.reserved:
            # Nothing in the cache worth keeping: size it afresh (it may shrink).
            if current.capacity != needed or current.rows != rows:
                text.setup_cache(needed, rows)
            return
        text.grow_cache(needed, rows)
        self._buffers = None

    def _prefill_chunk(self, sequence: Generation, touched: list[Generation]) -> None:
        text, request = self.text, sequence.request
        total = request.embeds.shape[0]
        chunk = text.prefill_chunk or total
        begin, end = sequence.prefilled, min(total, sequence.prefilled + chunk)
        embeds = request.embeds[begin:end][None].to(self.device)
        last = end == total
        logits = text(embeds, start=request.start + begin, head=last, row=sequence.row,
                      factor=request.rope_factor)
        sequence.prefilled = end
        if not last:
            return
        self.prefilling.remove(sequence)
        scores = logits[0, -1]
        if request.keep_logits:
            sequence.result.logits = scores.float().clone()
        sequence.first_at = time.perf_counter()
        sequence.result.timings.prefill_s = sequence.first_at - sequence.admitted_at
        self._emit(sequence, sequence.sampler(scores), touched)

    def _step_buffers(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[np.ndarray, ...]]:
        """The decode step's inputs: device tensors made once per cache shape, and host
        arrays they are filled from. On the CPU they share memory; elsewhere one copy per
        step from pinned memory. Nothing is allocated per token."""
        rows = self.text.cache.rows
        if self._buffers is None or self._buffers[0].shape[0] != rows:
            cpu = self.device.type == "cpu"
            pin = self.device.type == "cuda"
            host = (torch.zeros((rows, 1), dtype=torch.long, pin_memory=pin),
                    torch.zeros((rows,), dtype=torch.long, pin_memory=pin),
                    torch.ones((rows,), dtype=torch.float32, pin_memory=pin))
            device = host if cpu else tuple(t.to(self.device) for t in host)
            self._buffers = (*device, tuple(t.numpy() for t in host), host)
        return self._buffers

    def _decode(self, touched: list[Generation]) -> None:
        tokens, positions, factors, (tokens_np, positions_np, factors_np), host = self._step_buffers()
        # Idle rows (free, reserved between turns, prefilling) write to the scratch column.
        positions_np.fill(self.text.cache.scratch)
        tokens_np.fill(0)
        factors_np.fill(1.0)
        for generation in self.decoding:
            tokens_np[generation.row, 0] = generation.pending
            positions_np[generation.row] = generation.position
            factors_np[generation.row] = generation.request.rope_factor
        if tokens is not host[0]:
            for device_buffer, host_buffer in zip((tokens, positions, factors), host):
                device_buffer.copy_(host_buffer, non_blocking=True)
        if not self.text.compiled:
            # Only the rows up to the highest one decoding (compaction keeps that low):
            # idle rows beyond it cost nothing. Compiled, the step keeps every row (static shapes).
            n = max(g.row for g in self.decoding) + 1
            tokens, positions, factors = tokens[:n], positions[:n], factors[:n]
        logits = self.text.decode(tokens, positions, factors)  # (rows, vocab)
        self.steps += 1
        self.max_batch = max(self.max_batch, len(self.decoding))
        greedy: dict[int, tuple[float, int]] = {}
        if any(g.sampler.sampling.greedy for g in self.decoding):
            # Every greedy row's choice in one reduction and one transfer.
            top, index = logits.max(-1)
            greedy = dict(zip(range(logits.shape[0]), zip(top.tolist(), index.tolist())))
        for generation in list(self.decoding):
            generation.position += 1
            generation.result.fed += 1
            row = generation.row
            if row in greedy and generation.sampler.sampling.greedy:
                choice = greedy[row]
                action = lambda g, t, c=choice: self._emit(g, _checked(*c), t)  # noqa: E731
            else:
                action = lambda g, t: self._emit(g, g.sampler(logits[g.row]), t)  # noqa: E731
            self._guarded(generation, action, touched)

    def _guarded(self, sequence: Generation, action, touched: list[Generation]) -> None:
        """Run one sequence's part of a step; broken logits end that sequence only."""
        try:
            action(sequence, touched)
        except NonFiniteLogits as exc:
            self.cancel(sequence, "error", str(exc))
            touched.append(sequence)

    def _emit(self, sequence: Generation, token: int, touched: list[Generation]) -> None:
        """A sampled token: the end of the sequence, or its next token."""
        result = sequence.result
        touched.append(sequence)
        if token in sequence.request.stop_ids:
            result.fed = len(result.tokens)  # every answer token went through the model
            self._leave(sequence, "stop")
            return
        result.tokens.append(token)
        sequence.new.append(token)
        if len(result.tokens) >= sequence.limit:
            self._leave(sequence, "length")
            return
        sequence.pending = token
        if sequence not in self.decoding:
            self.decoding.append(sequence)

    def _leave(self, sequence: Generation, reason: str) -> None:
        if sequence in self.decoding:
            self.decoding.remove(sequence)
        self._finish(sequence, reason)

    def _compact(self) -> None:
        """Move the highest decoding sequence down into the lowest free row, so the
        uncompiled decode step (rows up to the highest decoding one) stays as small as
        the number of sequences decoding. One KV row copy per move, none per step."""
        while not self.text.compiled and self.decoding and self.free:
            top = max(self.decoding, key=lambda g: g.row)
            lowest = self.free[0]
            if top.request.slot is not None or lowest >= top.row:
                return
            self.text.cache.move(top.row, lowest, top.position)
            self.free.remove(lowest)
            self._free(top.row)
            top.row = lowest

    def _finish(self, sequence: Generation, reason: str, error: str | None = None) -> None:
        result = sequence.result
        result.stop_reason = reason
        result.error = error
        timings = result.timings
        timings.stop_reason = reason
        timings.answer_tokens = len(result.tokens)
        now = time.perf_counter()
        if sequence.first_at:
            timings.decode_s = now - sequence.first_at
        elif sequence.admitted_at:
            timings.prefill_s = now - sequence.admitted_at
        if sequence.row is not None and sequence.request.slot is None:
            self._free(sequence.row)
        sequence.pending = None

    def _free(self, row: int) -> None:
        if row not in self.free and row not in self.reserved:
            self.free.append(row)
            self.free.sort()


def _checked(top: float, index: int) -> int:
    """A greedy choice from a batched argmax, refused like ``Sampler`` refuses it when the
    row's scores are not finite."""
    check_logits(top)
    return index

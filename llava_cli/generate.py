"""Decoding rules: sampling settings, the sampler, stop ids. The loop that runs them is the
generation core (scheduler.py)."""

from __future__ import annotations

from dataclasses import dataclass

import math

import torch

from .errors import ModelError, UsageError
from .validate import MAX_SEED


@dataclass(frozen=True)
class Sampling:
    """Resolved decoding settings: greedy when ``temperature`` is 0."""

    max_new_tokens: int = 512
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0

    @classmethod
    def resolve(cls, generation_config: dict, *, max_new_tokens: int | None = None,
                temperature: float | None = None, top_p: float | None = None, top_k: int | None = None,
                seed: int | None = None) -> "Sampling":
        """Flags win; otherwise the checkpoint's generation_config decides.

        The checkpoint samples only if it says ``do_sample: true``; a temperature given
        on the command line turns sampling on (>0) or forces greedy (0), as in llama.cpp
        and ollama.
        """
        # generation_config.json was checked when the checkpoint was opened
        # (validate.check_generation_config); null means "not set".
        gc = {k: v for k, v in generation_config.items() if v is not None}
        sample = gc.get("do_sample") is True
        if temperature is None:
            temperature = float(gc.get("temperature", 1.0)) if sample else 0.0
        if not (temperature >= 0 and math.isfinite(temperature)):  # NaN fails both
            raise UsageError("--temperature must be a finite number >= 0")
        if top_p is None:
            top_p = float(gc.get("top_p", 1.0)) if sample else 1.0
        if not 0 < top_p <= 1:
            raise UsageError("--top-p must be in (0, 1]")
        if top_k is None:
            top_k = int(gc.get("top_k", 0) or 0) if sample else 0
        if top_k < 0:
            raise UsageError("--top-k must be >= 0")
        if max_new_tokens is None:
            max_new_tokens = int(gc.get("max_new_tokens", 512) or 512)
        if max_new_tokens < 1:
            raise UsageError("--max-new-tokens must be >= 1")
        if seed is not None and not (isinstance(seed, int) and 0 <= seed <= MAX_SEED):
            raise UsageError(f"--seed must be an integer from 0 to {MAX_SEED} (2**64 - 1), got {seed}")
        return cls(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k, seed=seed)




class NonFiniteLogits(ModelError):
    """The model's next-token scores hold NaN (or +inf, or are all -inf): its weights (or
    the media features) are broken; no token can be chosen."""


def check_logits(top: float) -> None:
    """``top`` is the largest logit (NaN when any is NaN): it must be finite."""
    if math.isnan(top):
        raise NonFiniteLogits("the model produced NaN logits: its weights may be corrupt")
    if math.isinf(top):
        raise NonFiniteLogits("the model produced infinite logits: its weights may be corrupt")


class Sampler:
    """logits (vocab,) → token id, by the rules in ``Sampling``.

    NaN or infinite scores are an error (``NonFiniteLogits``), never a token: argmax
    would pick a NaN's index and multinomial would crash on it."""

    def __init__(self, sampling: Sampling, device: torch.device) -> None:
        self.sampling = sampling
        self.generator = None
        if not sampling.greedy:
            self.generator = torch.Generator(device=device)
            if sampling.seed is not None:
                self.generator.manual_seed(sampling.seed % (MAX_SEED + 1))
            else:
                self.generator.seed()

    def __call__(self, logits: torch.Tensor) -> int:
        s = self.sampling
        if s.greedy:
            # max propagates NaN (argmax would silently pick it): one check, one sync more.
            top, index = torch.max(logits, 0)
            check_logits(float(top))
            return int(index)
        top = float(logits.max())
        check_logits(top)
        # Same order as the reference's logits processors: temperature, top-k, top-p.
        scores = logits.float() / s.temperature
        if not abs(top / s.temperature) < 1e38:
            # A tiny temperature overflows float32; shifted by the top score the softmax is
            # the same, and finite (the top token gets all the mass, as it should).
            scores = (logits.float() - top) / s.temperature
        if s.top_k and s.top_k < scores.numel():
            kth = torch.topk(scores, s.top_k).values[-1]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        if s.top_p < 1.0:
            sorted_scores, order = torch.sort(scores, descending=False)
            cumulative = sorted_scores.softmax(-1).cumsum(-1)
            drop = cumulative <= (1 - s.top_p)
            drop[-1] = False  # always keep the most likely token
            scores = scores.masked_fill(drop.scatter(0, order, drop), float("-inf"))
        probs = scores.softmax(-1)
        return int(torch.multinomial(probs, 1, generator=self.generator))


def eos_ids(*sources: object) -> frozenset[int]:
    """Collect stop ids from generation_config / config values (int or list)."""
    ids: set[int] = set()
    for value in sources:  # checked where they were read (validate.Fields.token_ids)
        if isinstance(value, int) and not isinstance(value, bool):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(v for v in value if isinstance(v, int) and not isinstance(v, bool))
    return frozenset(ids)

"""Attention backends behind one function.

``attend`` takes queries at absolute positions ``start…start+q_len-1`` and keys/values
for positions ``0…kv_len-1`` (the cache up to and including the queries), and applies a
causal mask. Grouped-query attention is handled without repeating K/V in memory.

Sliding-window attention (Mistral) follows transformers 4.48.3's sdpa/eager mask: a query at
position i sees keys i-window+1 … i, i.e. exactly ``window`` keys; key i-window is masked
(``key <= i - window``). A single decode query needs no mask: the keys are sliced instead.
"""

from __future__ import annotations

import importlib.util
import math

import torch
import torch.nn.functional as F

from ..errors import ModelError

BACKENDS = ("sdpa", "eager", "flash")
CHOICES = ("auto", *BACKENDS)


def flash_available(device: torch.device, dtype: torch.dtype) -> str | None:
    """None when FlashAttention-2 can run here, else why not (one phrase)."""
    if importlib.util.find_spec("flash_attn") is None:
        return "flash-attn is not installed (pip install 'llava-cli[flash]')"
    if device.type != "cuda":
        return f"FlashAttention-2 needs a CUDA GPU, and this runs on {device.type}"
    if dtype not in (torch.float16, torch.bfloat16):
        return f"FlashAttention-2 computes in float16 or bfloat16, not {str(dtype).removeprefix('torch.')}"
    major, _ = torch.cuda.get_device_capability(device)
    if major < 8:
        return "FlashAttention-2 needs an Ampere or newer GPU (compute capability 8.0+)"
    return None


def resolve_backend(name: str | None, device: torch.device, dtype: torch.dtype) -> str:
    """--attn → the backend to use. ``auto``: FlashAttention-2 where it can run, else SDPA
    (which itself picks flash / memory-efficient / math kernels per call)."""
    name = name or "auto"
    if name not in CHOICES:
        raise ModelError(f"unknown attention backend '{name}' (use {', '.join(CHOICES)})")
    if name == "auto":
        return "flash" if flash_available(device, dtype) is None else "sdpa"
    if name == "flash":
        why = flash_available(device, dtype)
        if why is not None:
            raise ModelError(f"--attn flash: {why}; use --attn sdpa")
    return name


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, start: int = 0,
           backend: str = "sdpa", causal: bool = True, window: int | None = None) -> torch.Tensor:
    """q (B, H, Lq, D), k/v (B, Hkv, Lk, D) → (B, H, Lq, D).

    ``window`` (causal only): each query sees at most the last ``window`` keys up to itself.
    """
    q_len, kv_len = q.shape[2], k.shape[2]
    if not causal or (window is not None and window >= kv_len):
        window = None  # no key is ever out of reach
    mask = None
    is_causal = False
    if causal and q_len == 1 and window is not None:
        # One query, at the last position: keep only the last window keys (views, no mask).
        k, v = k[:, :, kv_len - window:], v[:, :, kv_len - window:]
    elif causal and q_len > 1:
        if start == 0 and q_len == kv_len and window is None:
            is_causal = True
        else:
            # Query i sits at absolute position start+i and may see keys 0…start+i
            # (and, with a window, only those after start+i-window).
            rows = torch.arange(start, start + q_len, device=q.device)[:, None]
            cols = torch.arange(kv_len, device=q.device)[None, :]
            mask = cols <= rows
            if window is not None:
                mask &= cols > rows - window
    if backend == "eager":
        return _eager(q, k, v, mask, is_causal)
    if backend == "flash" and (mask is None or q_len == kv_len or start + q_len == kv_len):
        return _flash(q, k, v, causal=causal and q_len > 1, window=window)
    gqa = q.shape[1] != k.shape[1]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, enable_gqa=gqa)


def _eager(q, k, v, mask, is_causal):
    groups = q.shape[1] // k.shape[1]
    if groups > 1:
        k = k.repeat_interleave(groups, dim=1)
        v = v.repeat_interleave(groups, dim=1)
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    if is_causal:
        q_len = q.shape[2]
        mask = torch.ones(q_len, q_len, dtype=torch.bool, device=q.device).tril()
    if mask is not None:
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    weights = torch.softmax(scores.float(), dim=-1).to(q.dtype)
    return weights @ v


def _flash(q, k, v, *, causal: bool, window: int | None):
    """FlashAttention-2 (GQA native). Its causal mask aligns the queries with the last keys,
    which is where they sit here (the cache up to and including the queries)."""
    from flash_attn import flash_attn_func

    # (B, H, L, D) → (B, L, H, D), the layout flash-attn takes.
    out = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=causal,
                          window_size=(window - 1, 0) if window is not None else (-1, -1))
    return out.transpose(1, 2)


def attend_masked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, *,
                  backend: str = "sdpa") -> torch.Tensor:
    """Decode-step attention over a whole static cache: q (B, H, 1, D), k/v (B, Hkv, C, D),
    ``mask`` (B, C) bool of the positions each row's query sees. FlashAttention's kernel
    wants the cache in its own layout, so a flash model decodes through SDPA here (same maths)."""
    mask = mask[:, None, None, :]
    if backend == "eager":
        return _eager(q, k, v, mask, False)
    batch, heads, _, dim = q.shape
    groups = heads // k.shape[1]
    # Grouped-query decode: the query heads that share a key/value head become that head's
    # `groups` queries, so each cached key and value is read once per step, not once per
    # query head. Decoding long prompts is bound by exactly these reads.
    out = F.scaled_dot_product_attention(q.view(batch, k.shape[1], groups, dim), k, v, attn_mask=mask)
    return out.view(batch, heads, 1, dim)

"""Attention backends behind one function.

``attend`` takes queries at absolute positions ``start…start+q_len-1`` and keys/values
for positions ``0…kv_len-1`` (the cache up to and including the queries), and applies a
causal mask. Grouped-query attention is handled without repeating K/V in memory.

Sliding-window attention (Mistral) follows transformers 4.48.3's sdpa/eager mask: a query at
position i sees keys i-window+1 … i, i.e. exactly ``window`` keys; key i-window is masked
(``key <= i - window``). A single decode query needs no mask: the keys are sliced instead.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

BACKENDS = ("sdpa", "eager")


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

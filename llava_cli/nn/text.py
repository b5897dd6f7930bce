"""One decoder-only transformer for every LLaVA backbone (Llama/Vicuna, Mistral, Yi,
Llama-3, Qwen1.5/Qwen2), with backbone quirks as config flags rather than classes.

Shapes at the boundary: token embeddings ``(batch, seq, hidden)`` in, logits
``(batch, seq, vocab)`` out. The KV cache (kvcache.py) is a preallocated buffer of slots
(rows) × positions owned by the model (``setup_cache``, ``grow_cache``): a prefill writes a
run of one sequence's positions into its row from an explicit ``start``; a decode step
(``step``) advances every row by one token, each at its own position and RoPE factor.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelError
from .attention import attend, attend_masked
from .config import TextConfig  # noqa: F401 - its home was here
from .kvcache import KVCache


def uninitialized_embedding(rows: int, dim: int) -> nn.Embedding:
    """An Embedding whose weights the loader will fill: skipping the random init matters
    on the meta device, where ``normal_`` costs a second of imports for nothing."""
    return nn.Embedding(rows, dim, _weight=torch.empty(rows, dim))


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in float32 whatever the weights' dtype, then cast back before the
        # scale: the order the reference uses, which matters in half precision.
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(dtype)


class Rotary(nn.Module):
    """Rotary position embedding in the half-split layout (first half, second half).

    The linear RoPE factor is an argument of each call, not a property of the model: one
    decode step may hold sequences with different factors (a --long-video prompt beside a
    normal one), each row with its own."""

    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.head_dim = cfg.head_dim
        self.theta = cfg.rope_theta
        self.factor = cfg.rope_linear_factor  # the checkpoint's own
        # Computed on the CPU even while the model is built on the meta device: arithmetic
        # on meta tensors goes through torch._refs, whose first use imports torch._dynamo
        # (2 s at every start). ``reset`` recomputes it on the real device after loading.
        self.register_buffer("inv_freq", self._inv_freq(torch.device("cpu")), persistent=False)

    def _inv_freq(self, device: torch.device) -> torch.Tensor:
        """Unscaled: 1 / theta^(2i/d)."""
        exponents = torch.arange(0, self.head_dim, 2, dtype=torch.int64, device=device).float() / self.head_dim
        return 1.0 / (self.theta ** exponents)

    def reset(self, device: torch.device) -> None:
        """Recompute the frequencies (after meta-device construction) on ``device``."""
        self.inv_freq = self._inv_freq(device)

    def forward(self, positions: torch.Tensor, dtype: torch.dtype,
                factor: float | torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """positions (seq,) with one ``factor`` → cos, sin (seq, head_dim); or positions
        (rows,) with factors (rows,), one per row → (rows, head_dim)."""
        factor = self.factor if factor is None else factor
        if isinstance(factor, torch.Tensor):
            inv_freq = self.inv_freq[None, :] / factor[:, None]  # (rows, head_dim/2)
        else:
            inv_freq = (self.inv_freq / factor)[None, :]
        freqs = positions.float()[:, None] * inv_freq
        angles = torch.cat((freqs, freqs), dim=-1)
        return angles.cos().to(dtype), angles.sin().to(dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class Attention(nn.Module):
    def __init__(self, cfg: TextConfig, window: int | None = None, layer: int = 0) -> None:
        super().__init__()
        self.window = window
        self.layer = layer  # its index in the KV cache
        self.num_heads = cfg.num_heads
        self.num_kv_heads = cfg.num_kv_heads
        self.head_dim = cfg.head_dim
        self.q = nn.Linear(cfg.hidden_size, cfg.num_heads * cfg.head_dim, bias=cfg.qkv_bias)
        self.k = nn.Linear(cfg.hidden_size, cfg.num_kv_heads * cfg.head_dim, bias=cfg.qkv_bias)
        self.v = nn.Linear(cfg.hidden_size, cfg.num_kv_heads * cfg.head_dim, bias=cfg.qkv_bias)
        self.o = nn.Linear(cfg.num_heads * cfg.head_dim, cfg.hidden_size, bias=False)

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        batch, seq, _ = x.shape
        q = self.q(x).view(batch, seq, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k(x).view(batch, seq, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v(x).view(batch, seq, self.num_kv_heads, self.head_dim).transpose(1, 2)
        return q, k, v

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: KVCache | None,
                row: int, start: int, backend: str) -> torch.Tensor:
        """A run of positions start… of one sequence (x (1, seq, hidden); without a cache,
        any batch from position 0)."""
        batch, seq, _ = x.shape
        q, k, v = self._qkv(x)
        q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        if cache is not None:
            k, v = cache.write(self.layer, row, start, k, v)
        out = attend(q, k, v, start=start, backend=backend, window=self.window)  # (B, heads, seq, dim)
        return self.o(out.transpose(1, 2).reshape(batch, seq, -1))

    def step(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: KVCache,
             positions: torch.Tensor, mask: torch.Tensor, backend: str) -> torch.Tensor:
        """One decode token per cache row, static shapes: x (rows, 1, hidden), row r at
        ``positions[r]``. The new keys/values go into the cache in place; each query
        attends over its whole row, ``mask`` (rows, capacity + 1) saying what it sees."""
        rows = x.shape[0]
        q, k, v = self._qkv(x)
        q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        keys, values = cache.update(self.layer, positions, k, v)
        out = attend_masked(q, keys, values, mask, backend=backend)
        return self.o(out.transpose(1, 2).reshape(rows, 1, -1))


class MLP(nn.Module):
    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.gate = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


class Block(nn.Module):
    def __init__(self, cfg: TextConfig, index: int = 0) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        windowed = cfg.sliding_window is not None and index >= cfg.sliding_window_from_layer
        self.attn = Attention(cfg, cfg.sliding_window if windowed else None, layer=index)
        self.mlp_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, cache: KVCache | None, row: int, start: int, backend: str) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin, cache, row, start, backend)
        return x + self.mlp(self.mlp_norm(x))

    def step(self, x, cos, sin, cache: KVCache, positions, masks: dict, backend: str) -> torch.Tensor:
        x = x + self.attn.step(self.attn_norm(x), cos, sin, cache, positions, masks[self.attn.window], backend)
        return x + self.mlp(self.mlp_norm(x))


class TextModel(nn.Module):
    """Embeddings → blocks → norm → LM head."""

    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = uninitialized_embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            # One matrix for both ends (OneVision-0.5B); the loader re-ties after filling.
            self.lm_head.weight = self.embed.weight
        self.rotary = Rotary(cfg)
        self.attn_backend = "sdpa"
        self.cache: KVCache | None = None
        self.prefill_chunk = 0  # prompt positions per forward pass while prefilling; 0: all
        self._decode = self.step  # torch.compile(self.step) after compile_decode()
        self.compiled = False
        self.windows = sorted({b.attn.window for b in self.layers if b.attn.window is not None})

    @property
    def cache_capacity(self) -> int:
        return self.cache.capacity if self.cache is not None else 0

    def setup_cache(self, capacity: int, rows: int = 1) -> None:
        """A fresh KV cache of ``rows`` slots × ``capacity`` positions (the current one
        when it is exactly that size: its contents are then stale, not cleared)."""
        if self.cache is not None and self.cache.capacity == capacity and self.cache.rows == rows:
            return
        self.cache = None  # let the old buffers go before the new ones are allocated
        ref = self.embed.weight
        self.cache = KVCache(self.cfg.num_layers, rows, self.cfg.num_kv_heads, capacity, self.cfg.head_dim,
                             dtype=ref.dtype, device=ref.device)

    def grow_cache(self, capacity: int, rows: int | None = None) -> None:
        """Make the KV cache hold at least ``capacity`` positions (and ``rows`` slots),
        KEEPING what it holds: a conversation's history and the other sequences in flight
        stay. Without a cache this is ``setup_cache``."""
        if self.cache is None:
            self.setup_cache(capacity, rows or 1)
            return
        rows = rows or self.cache.rows
        if capacity <= self.cache.capacity and rows <= self.cache.rows:
            return
        self.cache = self.cache.grow(capacity, rows)

    def drop_cache(self) -> None:
        self.cache = None

    def forward(self, embeds: torch.Tensor, start: int = 0, last_only: bool = True, head: bool = True, *,
                row: int = 0, factor: float | None = None) -> torch.Tensor | None:
        """embeds (batch, seq, hidden) at positions start…start+seq-1 → logits.

        With a cache, the positions go into its ``row`` (batch 1). ``factor``: the linear
        RoPE factor of this sequence (default: the checkpoint's). With ``last_only`` only
        the final position goes through the LM head: the only logits generation needs, and
        the head is the largest matrix in small models. ``head=False`` only fills the KV
        cache (a prefill chunk before the last): None.
        """
        seq = embeds.shape[1]
        if self.cache is not None and start + seq > self.cache.capacity:
            raise ModelError(f"KV cache holds {self.cache.capacity} positions, asked for {start + seq}")
        positions = torch.arange(start, start + seq, device=embeds.device)
        cos, sin = self.rotary(positions, embeds.dtype, factor)
        x = embeds
        for block in self.layers:
            x = block(x, cos, sin, self.cache, row, start, self.attn_backend)
        if not head:
            return None
        if last_only:
            x = x[:, -1:]
        return self.lm_head(self.norm(x))

    def prefill(self, embeds: torch.Tensor, start: int = 0, *, row: int = 0,
                factor: float | None = None) -> torch.Tensor:
        """A prompt into row ``row`` of the KV cache, ``prefill_chunk`` positions per pass,
        so a long video prompt's activations (MLP, attention scores) stay bounded by the
        chunk, not the prompt: logits of the last position (1, 1, vocab)."""
        seq = embeds.shape[1]
        chunks = self.chunks(seq)
        for offset, end in chunks[:-1]:
            self(embeds[:, offset:end], start=start + offset, head=False, row=row, factor=factor)
        offset, end = chunks[-1]
        return self(embeds[:, offset:end], start=start + offset, row=row, factor=factor)

    def chunks(self, seq: int) -> list[tuple[int, int]]:
        """(begin, end) of each prefill pass over ``seq`` prompt positions."""
        chunk = self.prefill_chunk
        if not chunk or seq <= chunk or self.cache is None:
            return [(0, seq)]
        return [(offset, min(offset + chunk, seq)) for offset in range(0, seq, chunk)]

    def step(self, tokens: torch.Tensor, positions: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
        """One decode step over every cache row, with static shapes, the part
        ``torch.compile`` captures: tokens (rows, 1) long, row r's at ``positions[r]``
        (rows,) long with RoPE factor ``factors[r]`` (rows,) float → logits (rows, vocab).

        Shapes depend only on the cache's size, and positions are tensors, so the same
        graph (CUDA graph on GPU) serves every token. Idle rows sit at the scratch column."""
        cache = self.cache
        x = self.embed(tokens)
        cos, sin = self.rotary(positions, x.dtype, factors)
        cos, sin = cos[:, None, None, :], sin[:, None, None, :]  # (rows, 1, 1, head_dim): per row
        columns, at = cache.columns[None, :], positions[:, None]
        visible = columns <= at  # (rows, capacity + 1)
        masks = {None: visible}
        for window in self.windows:
            masks[window] = visible & (columns > at - window)
        for block in self.layers:
            x = block.step(x, cos, sin, cache, positions, masks, self.attn_backend)
        return self.lm_head(self.norm(x))[:, -1]

    def decode(self, tokens: torch.Tensor, positions: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
        """``step``, compiled when ``compile_decode`` was called."""
        return self._decode(tokens, positions, factors)

    def compile_decode(self) -> None:
        """Capture the decode step with torch.compile: CUDA graphs on GPU
        ("reduce-overhead"), fused kernels elsewhere. Compiles at the first token."""
        device = self.embed.weight.device
        mode = "reduce-overhead" if device.type == "cuda" else "default"
        self._decode = torch.compile(self.step, mode=mode, fullgraph=True, dynamic=False)
        self.compiled = True

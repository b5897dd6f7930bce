"""One decoder-only transformer for every LLaVA backbone (Llama/Vicuna, Mistral, Yi,
Llama-3, Qwen1.5/Qwen2), with backbone quirks as config flags rather than classes.

Shapes at the boundary: token embeddings ``(batch, seq, hidden)`` in, logits
``(batch, seq, vocab)`` out. The KV cache is a preallocated buffer owned by the model
(``setup_cache``) and addressed by an explicit ``start`` position, so prefill and decode
are the same call with different lengths.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelError
from .attention import attend, attend_masked
from .config import TextConfig  # noqa: F401 - its home was here

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
    """Rotary position embedding in the half-split layout (first half, second half)."""

    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.head_dim = cfg.head_dim
        self.theta = cfg.rope_theta
        self.factor = cfg.rope_linear_factor
        # Computed on the CPU even while the model is built on the meta device: arithmetic
        # on meta tensors goes through torch._refs, whose first use imports torch._dynamo
        # (2 s at every start). ``reset`` recomputes it on the real device after loading.
        self.register_buffer("inv_freq", self._inv_freq(torch.device("cpu")), persistent=False)

    def _inv_freq(self, device: torch.device) -> torch.Tensor:
        exponents = torch.arange(0, self.head_dim, 2, dtype=torch.int64, device=device).float() / self.head_dim
        return 1.0 / (self.theta ** exponents) / self.factor

    def reset(self, device: torch.device) -> None:
        """Recompute the frequencies (after meta-device construction) on ``device``."""
        self.inv_freq = self._inv_freq(device)

    def set_linear_factor(self, factor: float) -> None:
        self.factor = factor
        self.inv_freq = self._inv_freq(self.inv_freq.device)

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions.float()[:, None] * self.inv_freq[None, :]  # (seq, head_dim/2)
        angles = torch.cat((freqs, freqs), dim=-1)
        return angles.cos().to(dtype), angles.sin().to(dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class Attention(nn.Module):
    def __init__(self, cfg: TextConfig, window: int | None = None) -> None:
        super().__init__()
        self.window = window
        self.num_heads = cfg.num_heads
        self.num_kv_heads = cfg.num_kv_heads
        self.head_dim = cfg.head_dim
        self.q = nn.Linear(cfg.hidden_size, cfg.num_heads * cfg.head_dim, bias=cfg.qkv_bias)
        self.k = nn.Linear(cfg.hidden_size, cfg.num_kv_heads * cfg.head_dim, bias=cfg.qkv_bias)
        self.v = nn.Linear(cfg.hidden_size, cfg.num_kv_heads * cfg.head_dim, bias=cfg.qkv_bias)
        self.o = nn.Linear(cfg.num_heads * cfg.head_dim, cfg.hidden_size, bias=False)
        # (batch, kv_heads, capacity, head_dim). Buffers, not plain attributes: torch.compile
        # then treats them as the model's static state, which CUDA graphs may update in place.
        self.register_buffer("k_cache", None, persistent=False)
        self.register_buffer("v_cache", None, persistent=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, start: int,
                backend: str) -> torch.Tensor:
        batch, seq, _ = x.shape
        q = self.q(x).view(batch, seq, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k(x).view(batch, seq, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v(x).view(batch, seq, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        if self.k_cache is not None:
            end = start + seq
            self.k_cache[:, :, start:end] = k
            self.v_cache[:, :, start:end] = v
            k, v = self.k_cache[:, :, :end], self.v_cache[:, :, :end]
        out = attend(q, k, v, start=start, backend=backend, window=self.window)  # (B, heads, seq, dim)
        return self.o(out.transpose(1, 2).reshape(batch, seq, -1))

    def step(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, position: torch.Tensor,
             mask: torch.Tensor, backend: str) -> torch.Tensor:
        """One decode token with static shapes: x (B, 1, hidden) at ``position`` (1,) long.
        The new key/value go into the cache in place; the query attends over the whole
        buffer, ``mask`` (capacity,) bool saying which slots it may see."""
        batch = x.shape[0]
        q = self.q(x).view(batch, 1, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k(x).view(batch, 1, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v(x).view(batch, 1, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        self.k_cache.index_copy_(2, position, k)
        self.v_cache.index_copy_(2, position, v)
        out = attend_masked(q, self.k_cache, self.v_cache, mask, backend=backend)
        return self.o(out.transpose(1, 2).reshape(batch, 1, -1))


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
        self.attn = Attention(cfg, cfg.sliding_window if windowed else None)
        self.mlp_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, start: int, backend: str) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin, start, backend)
        return x + self.mlp(self.mlp_norm(x))

    def step(self, x, cos, sin, position, masks: dict, backend: str) -> torch.Tensor:
        x = x + self.attn.step(self.attn_norm(x), cos, sin, position, masks[self.attn.window], backend)
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
        self.cache_capacity = 0
        self.register_buffer("slots", None, persistent=False)  # (capacity,) 0…capacity-1, for decode masks
        self.prefill_chunk = 0  # prompt positions per forward pass while prefilling; 0: all
        self._decode = self.step  # torch.compile(self.step) after compile_decode()
        self.compiled = False
        self.windows = sorted({b.attn.window for b in self.layers if b.attn.window is not None})

    def setup_cache(self, capacity: int, batch: int = 1) -> None:
        """Allocate (or reuse) a KV buffer that holds ``capacity`` positions."""
        if capacity <= self.cache_capacity and self.layers[0].attn.k_cache is not None \
                and self.layers[0].attn.k_cache.shape[0] == batch:
            return
        ref = self.embed.weight
        shape = (batch, self.cfg.num_kv_heads, capacity, self.cfg.head_dim)
        for block in self.layers:
            block.attn.k_cache = torch.zeros(shape, dtype=ref.dtype, device=ref.device)
            block.attn.v_cache = torch.zeros(shape, dtype=ref.dtype, device=ref.device)
        self.cache_capacity = capacity
        self.slots = torch.arange(capacity, device=ref.device)

    def grow_cache(self, capacity: int) -> None:
        """Make the KV buffer hold at least ``capacity`` positions, KEEPING what it holds.

        ``setup_cache`` reallocates and loses the contents; a multi-turn conversation keeps
        its history in the cache, so it grows by copying instead. Without a cache this is
        ``setup_cache``. All new buffers are built before any is installed, so an
        interruption part-way leaves the old cache whole.
        """
        first = self.layers[0].attn.k_cache
        if first is None:
            self.setup_cache(capacity)
            return
        if capacity <= self.cache_capacity:
            return
        grown = []
        for block in self.layers:
            old_k, old_v = block.attn.k_cache, block.attn.v_cache
            shape = (*old_k.shape[:2], capacity, old_k.shape[3])
            new_k = torch.zeros(shape, dtype=old_k.dtype, device=old_k.device)
            new_v = torch.zeros(shape, dtype=old_v.dtype, device=old_v.device)
            new_k[:, :, : old_k.shape[2]] = old_k
            new_v[:, :, : old_v.shape[2]] = old_v
            grown.append((new_k, new_v))
        for block, (new_k, new_v) in zip(self.layers, grown):
            block.attn.k_cache, block.attn.v_cache = new_k, new_v
        self.cache_capacity = capacity
        self.slots = torch.arange(capacity, device=first.device)

    def drop_cache(self) -> None:
        for block in self.layers:
            block.attn.k_cache = block.attn.v_cache = None
        self.cache_capacity = 0
        self.slots = None

    def forward(self, embeds: torch.Tensor, start: int = 0, last_only: bool = True,
                head: bool = True) -> torch.Tensor | None:
        """embeds (batch, seq, hidden) at positions start…start+seq-1 → logits.

        With ``last_only`` only the final position goes through the LM head: the only
        logits generation needs, and the head is the largest matrix in small models.
        ``head=False`` only fills the KV cache (a prefill chunk before the last): None.
        """
        seq = embeds.shape[1]
        if self.cache_capacity and start + seq > self.cache_capacity:
            raise ModelError(f"KV cache holds {self.cache_capacity} positions, asked for {start + seq}")
        positions = torch.arange(start, start + seq, device=embeds.device)
        cos, sin = self.rotary(positions, embeds.dtype)
        x = embeds
        for block in self.layers:
            x = block(x, cos, sin, start, self.attn_backend)
        if not head:
            return None
        if last_only:
            x = x[:, -1:]
        return self.lm_head(self.norm(x))

    def prefill(self, embeds: torch.Tensor, start: int = 0) -> torch.Tensor:
        """The prompt into the KV cache, ``prefill_chunk`` positions per pass, so a long
        video prompt's activations (MLP, attention scores) stay bounded by the chunk, not
        the prompt: logits of the last position (batch, 1, vocab)."""
        seq, chunk = embeds.shape[1], self.prefill_chunk
        if not chunk or seq <= chunk or not self.cache_capacity:
            return self(embeds, start=start)
        last = (seq - 1) // chunk * chunk
        for offset in range(0, last, chunk):
            self(embeds[:, offset:offset + chunk], start=start + offset, head=False)
        return self(embeds[:, last:], start=start + last)

    def step(self, token: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        """One decode step with static shapes, the part ``torch.compile`` captures:
        token (batch, 1) long at ``position`` (1,) long → logits (batch, vocab).

        Shapes depend only on the cache's capacity, and the position is a tensor, so
        the same graph (CUDA graph on GPU) serves every token."""
        x = self.embed(token)
        cos, sin = self.rotary(position, x.dtype)
        visible = self.slots <= position  # (capacity,)
        masks = {None: visible}
        for window in self.windows:
            masks[window] = visible & (self.slots > position - window)
        for block in self.layers:
            x = block.step(x, cos, sin, position, masks, self.attn_backend)
        return self.lm_head(self.norm(x))[:, -1]

    def decode(self, token: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        """``step``, compiled when ``compile_decode`` was called."""
        return self._decode(token, position)

    def compile_decode(self) -> None:
        """Capture the decode step with torch.compile: CUDA graphs on GPU
        ("reduce-overhead"), fused kernels elsewhere. Compiles at the first token."""
        device = self.embed.weight.device
        mode = "reduce-overhead" if device.type == "cuda" else "default"
        self._decode = torch.compile(self.step, mode=mode, fullgraph=True, dynamic=False)
        self.compiled = True

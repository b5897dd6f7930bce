"""ViT vision towers: CLIP (class token, pre-LayerNorm, quick-GELU) and SigLIP (no class
token, patch bias, tanh-GELU) as one module with config flags.

Input pixels ``(views, 3, S, S)``; output the hidden states of one chosen layer,
``(views, tokens, hidden)``. Layers past the chosen one are never built or run.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelError
from .attention import attend
from .config import VisionConfig  # noqa: F401 - its home was here
from .text import uninitialized_embedding

_ACTIVATIONS = {  # one for each name config.VISION_ACTIVATIONS accepts
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu": F.gelu,
}


class VisionAttention(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.num_heads = cfg.num_heads
        self.q = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.k = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.v = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.out = nn.Linear(cfg.hidden_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor, backend: str) -> torch.Tensor:
        views, tokens, hidden = x.shape
        split = lambda t: t.view(views, tokens, self.num_heads, -1).transpose(1, 2)
        out = attend(split(self.q(x)), split(self.k(x)), split(self.v(x)), backend=backend, causal=False)
        return self.out(out.transpose(1, 2).reshape(views, tokens, hidden))


class VisionBlock(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.attn = VisionAttention(cfg)
        self.norm2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size)
        self.act = _ACTIVATIONS[cfg.hidden_act]

    def forward(self, x: torch.Tensor, backend: str) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), backend)
        return x + self.fc2(self.act(self.fc1(self.norm2(x))))


class VisionTower(nn.Module):
    def __init__(self, cfg: VisionConfig, feature_layer: int) -> None:
        super().__init__()
        self.cfg = cfg
        clip = cfg.has_class_token
        self.patch_embed = nn.Conv2d(3, cfg.hidden_size, cfg.patch_size, cfg.patch_size, bias=not clip)
        positions = cfg.grid ** 2 + (1 if clip else 0)
        self.pos_embed = uninitialized_embedding(positions, cfg.hidden_size)
        self.class_embed = nn.Parameter(torch.zeros(cfg.hidden_size)) if clip else None
        self.pre_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps) if clip else None
        self.blocks = nn.ModuleList(VisionBlock(cfg) for _ in range(cfg.layers_needed(feature_layer)))
        self.attn_backend = "sdpa"
        self.views_per_pass = 4

    @property
    def num_tokens(self) -> int:
        return self.pos_embed.num_embeddings

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """(views, 3, S, S) → (views, tokens, hidden); tokens include CLS for CLIP.

        Views (tiles, frames) are independent: they go through in groups of
        ``views_per_pass``, so a 32-frame video's activations are those of 4 frames (a
        few tens of MB at CLIP-L width instead of hundreds), at no cost on a GPU that 4
        views of 577 tokens already fill."""
        if pixels.shape[0] <= self.views_per_pass:
            return self._forward(pixels)
        return torch.cat([self._forward(group) for group in pixels.split(self.views_per_pass)])

    def _forward(self, pixels: torch.Tensor) -> torch.Tensor:
        weight = self.patch_embed.weight
        x = self.patch_embed(pixels.to(weight.dtype)).flatten(2).transpose(1, 2)  # raster order
        if self.class_embed is not None:
            cls = self.class_embed.expand(x.shape[0], 1, -1)
            x = torch.cat((cls, x), dim=1)
        x = x + self.pos_embed.weight[None]
        if self.pre_norm is not None:
            x = self.pre_norm(x)
        for block in self.blocks:
            x = block(x, self.attn_backend)
        return x

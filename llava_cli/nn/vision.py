"""ViT vision towers: CLIP (class token, pre-LayerNorm, quick-GELU) and SigLIP (no class
token, patch bias, tanh-GELU) as one module with config flags.

Input pixels ``(views, 3, S, S)``; output the hidden states of one chosen layer,
``(views, tokens, hidden)``. Layers past the chosen one are never built or run.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelError
from .attention import attend
from .text import uninitialized_embedding

_VISION_DEFAULTS = {
    "clip_vision_model": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                              num_attention_heads=12, image_size=224, patch_size=32,
                              layer_norm_eps=1e-5, hidden_act="quick_gelu"),
    "siglip_vision_model": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                num_attention_heads=12, image_size=224, patch_size=16,
                                layer_norm_eps=1e-6, hidden_act="gelu_pytorch_tanh"),
}

_ACTIVATIONS = {
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu": F.gelu,
}


@dataclass(frozen=True)
class VisionConfig:
    kind: str  # "clip_vision_model" | "siglip_vision_model"
    hidden_size: int
    intermediate_size: int
    num_layers: int  # layers in the checkpoint
    num_heads: int
    image_size: int
    patch_size: int
    layer_norm_eps: float
    hidden_act: str

    @classmethod
    def from_hf(cls, raw: dict) -> "VisionConfig":
        kind = raw.get("model_type", "clip_vision_model")
        if kind not in _VISION_DEFAULTS:
            raise ModelError(f"unsupported vision tower '{kind}' (supported: clip, siglip)")
        merged = {**_VISION_DEFAULTS[kind], **raw}
        if merged["hidden_act"] not in _ACTIVATIONS:
            raise ModelError(f"unsupported vision activation '{merged['hidden_act']}'")
        return cls(kind=kind, hidden_size=int(merged["hidden_size"]),
                   intermediate_size=int(merged["intermediate_size"]),
                   num_layers=int(merged["num_hidden_layers"]), num_heads=int(merged["num_attention_heads"]),
                   image_size=int(merged["image_size"]), patch_size=int(merged["patch_size"]),
                   layer_norm_eps=float(merged["layer_norm_eps"]), hidden_act=merged["hidden_act"])

    @property
    def has_class_token(self) -> bool:
        return self.kind == "clip_vision_model"

    @property
    def grid(self) -> int:
        """Patches per side."""
        return self.image_size // self.patch_size

    def layers_needed(self, feature_layer: int) -> int:
        """Blocks to run so that hidden_states[feature_layer] is the last one computed.

        hidden_states[0] is the embedding output and [k] the output of block k, so
        index -2 of 24 blocks is block 23 and the 24th block is never needed.
        """
        index = feature_layer if feature_layer >= 0 else self.num_layers + 1 + feature_layer
        if not 0 <= index <= self.num_layers:
            raise ModelError(f"vision_feature_layer {feature_layer} is outside the {self.num_layers}-layer tower")
        return index


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

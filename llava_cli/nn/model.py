"""The composite LLaVA module: vision tower(s), projector, optional image_newline and the
text decoder, with the names the loader fills (loading.py maps checkpoint keys to them)."""

from __future__ import annotations

import torch
from torch import nn

from .config import TextConfig, VisionConfig
from .projector import Projector
from .text import TextModel
from .vision import VisionTower


class LlavaModel(nn.Module):
    """Vision tower(s) + projector + optional image_newline + text decoder."""

    def __init__(self, text: TextConfig, vision: VisionConfig, feature_layer: int, *,
                 projector_act: str = "gelu", projector_bias: bool = True, image_newline: bool = False,
                 towers: tuple[str, ...] = ("vision",)) -> None:
        super().__init__()
        for tower in towers:
            setattr(self, tower, VisionTower(vision, feature_layer))
        self.projector = Projector(vision.hidden_size, text.hidden_size, projector_act, projector_bias)
        self.image_newline = nn.Parameter(torch.zeros(text.hidden_size)) if image_newline else None
        self.text = TextModel(text)

    def tie_missing_weights(self, missing: list[str]) -> list[str]:
        """Tied checkpoints store no LM head: reuse the embedding matrix."""
        if "text.lm_head.weight" in missing and self.text.cfg.tie_word_embeddings:
            self.text.lm_head.weight = self.text.embed.weight
            missing = [m for m in missing if m != "text.lm_head.weight"]
        return missing

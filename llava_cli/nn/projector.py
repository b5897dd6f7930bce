"""The two-layer MLP that maps vision features into the language model's space."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelError


class Projector(nn.Module):
    def __init__(self, vision_hidden: int, text_hidden: int, act: str = "gelu", bias: bool = True) -> None:
        super().__init__()
        if act != "gelu":
            raise ModelError(f"unsupported projector activation '{act}' (supported: gelu)")
        self.fc1 = nn.Linear(vision_hidden, text_hidden, bias=bias)
        self.fc2 = nn.Linear(text_hidden, text_hidden, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(…, vision_hidden) → (…, text_hidden), exact (erf) GELU between."""
        return self.fc2(F.gelu(self.fc1(x)))

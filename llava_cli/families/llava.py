"""LLaVA-1.5: one CLIP-336 view per image (shortest edge → 336, centre crop), layer -2,
class token dropped, projector: 576 tokens per image. Images only."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .. import processing as px
from ..errors import ModelError
from .base import Family, LlavaModel, MediaInput


class Llava(Family):
    name = "llava"
    title = "LLaVA-1.5"
    model_types = ("llava",)
    architectures = ("LlavaForConditionalGeneration",)
    defaults = {"image_token_index": 32000, "vision_feature_layer": -2,
                "vision_feature_select_strategy": "default", "projector_hidden_act": "gelu",
                "multimodal_projector_bias": True}

    def __init__(self, checkpoint) -> None:
        super().__init__(checkpoint)
        tile = self.vision_config.image_size
        # CLIPImageProcessor: no pad-to-square (the original LLaVA-1.5 "pad" mode is not in the HF port).
        self.image_pixels = px.PixelConfig.from_dict(checkpoint.preprocessor, default_size=tile)
        if self.image_pixels.tile != tile:
            raise ModelError(f"preprocessor view {self.image_pixels.tile}px does not match the "
                             f"vision tower's {tile}px")

    def build(self) -> nn.Module:
        return LlavaModel(self.text_config, self.vision_config, self.feature_layer,
                          projector_act=self.config.get("projector_hidden_act", "gelu"),
                          projector_bias=self.config.get("multimodal_projector_bias", True))

    def token_ids(self) -> dict[str, int]:
        return {"image": int(self.config["image_token_index"])}

    @property
    def tokens_per_image(self) -> int:
        # The processor's (S/p)² + num_additional_image_tokens − (1 under "default"); with the
        # hub's processor settings (patch 14, 1 additional token) that is what the tower yields.
        # (4.48.3's LlavaProcessor defaults num_additional_image_tokens to 0 and patch_size to
        # None; the hub's processor_config.json sets 1 and 14, and the model only accepts the
        # count it produces, so we count what the model produces.)
        extra = 1 if self.select_strategy == "full" and self.vision_config.has_class_token else 0
        return self.vision_config.grid ** 2 + extra

    def prepare_image(self, image: np.ndarray) -> MediaInput:
        pixels = torch.from_numpy(px.standard_view(image, self.image_pixels))[None]
        height, width = image.shape[:2]
        return MediaInput("image", pixels, self.tokens_per_image, self.token_ids()["image"], (height, width))

    def encode(self, model: nn.Module, item: MediaInput) -> torch.Tensor:
        if item.kind != "image":
            raise ModelError(f"{self.title} does not take {item.kind}s")
        tower = model.vision
        features = self.select_features(tower(item.pixels.to(tower.patch_embed.weight.device)))
        return model.projector(features).reshape(-1, model.projector.fc2.out_features)

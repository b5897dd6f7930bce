"""LLaVA-1.5: one CLIP-336 view per image (shortest edge → 336, centre crop), layer -2,
class token dropped, projector: 576 tokens per image. Images only."""

from __future__ import annotations

import numpy as np

from .. import processing as px
from ..errors import ModelError
from ..lazy import lazy
from .base import Family, MediaInput

torch = lazy("torch")


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
        self.image_pixels = px.PixelConfig.from_dict(checkpoint.preprocessor, default_size=tile,
                                                   source=str(checkpoint.folder / "preprocessor_config.json"))
        if self.image_pixels.tile != tile:
            raise ModelError(f"preprocessor view {self.image_pixels.tile}px does not match the "
                             f"vision tower's {tile}px")


    def token_ids(self) -> dict[str, int]:
        return {"image": int(self.config["image_token_index"])}

    def prepare_image(self, image: np.ndarray) -> MediaInput:
        pixels = torch.from_numpy(px.standard_view(image, self.image_pixels))[None]
        height, width = image.shape[:2]
        return MediaInput("image", pixels, self.tokens_per_view, self.token_ids()["image"], (height, width))

    def encode(self, model: nn.Module, item: MediaInput, *, hidden: torch.Tensor | None = None) -> torch.Tensor:
        if item.kind != "image":
            raise ModelError(f"{self.title} does not take {item.kind}s")
        features = self.select_features(self.run_tower(model, item, hidden))
        return model.projector(features).reshape(-1, model.projector.fc2.out_features)

"""LLaVA-1.5 and the checkpoints that share its architecture (``LlavaForConditionalGeneration``):
one square view per image, the tower's features (class token dropped under "default"),
projector, spliced in. Images only.

The tower and the backbone are whatever config.json names: LLaVA-1.5 is CLIP-336 at layer
-2 with Vicuna (576 tokens per image); LLaVA-Interleave is SigLIP-384 at layer -1, strategy
"full", with Qwen2 (729 tokens per image). Pixels follow the image processor the checkpoint's
preprocessor_config.json names: CLIPImageProcessor resizes the shortest edge and centre-crops
(CLIP mean/std unless the file says otherwise); SiglipImageProcessor squashes the image to
height×width with no crop (mean/std 0.5 unless the file says otherwise).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .. import processing as px
from ..errors import ModelError
from ..lazy import lazy
from ..validate import Fields
from .base import Family, MediaInput

if TYPE_CHECKING:
    from torch import nn

torch = lazy("torch")

SIGLIP_MEAN = SIGLIP_STD = (0.5, 0.5, 0.5)  # SiglipImageProcessor's defaults (IMAGENET_STANDARD_*)


def siglip_pixels(raw: dict, tile: int, *, source: str = "preprocessor_config.json") -> px.PixelConfig:
    """A SiglipImageProcessor config: resize straight to height×width (no aspect kept, no
    crop), rescale, normalize. A size the file leaves out is the tower's side."""
    fields = Fields(raw, source)
    shortest, height, width = px.pixel_size(fields, default=tile)
    if height is None or width is None:
        height = width = shortest
    if height != width:
        raise ModelError(f"{source}: the vision tower needs square views, size says {height}×{width}")
    return px.PixelConfig(shortest_edge=None, height=height, width=width, crop=None,
                          mean=fields.channels("image_mean", SIGLIP_MEAN),
                          std=fields.channels("image_std", SIGLIP_STD, positive=True),
                          rescale=fields.float("rescale_factor", 1 / 255, lo=0, hi=1e6, lo_open=True),
                          resample=px.resample_code(fields))


def uses_siglip_processor(preprocessor: dict, vision_kind: str) -> bool:
    """Whether the checkpoint's image processor is SigLIP's: the class the file names, else
    (no class named) the tower's kind."""
    kind = preprocessor.get("image_processor_type")
    if isinstance(kind, str) and kind:
        return kind.startswith("Siglip")
    return vision_kind == "siglip_vision_model"


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
        source = str(checkpoint.folder / "preprocessor_config.json")
        if uses_siglip_processor(checkpoint.preprocessor, self.vision_config.kind):
            self.image_pixels = siglip_pixels(checkpoint.preprocessor, tile, source=source)
        else:
            # CLIPImageProcessor: no pad-to-square (the original LLaVA-1.5 "pad" mode is not in the HF port).
            self.image_pixels = px.PixelConfig.from_dict(checkpoint.preprocessor, default_size=tile, source=source)
        if self.image_pixels.tile != tile:
            raise ModelError(f"preprocessor view {self.image_pixels.tile}px does not match the "
                             f"vision tower's {tile}px")

    def _tie(self, top: Fields) -> bool | None:
        # transformers 4.48.3 ties the LM head by text_config's flag (the composite's
        # tie_weights asks get_text_config()); a config that says so only at the top
        # level is honoured too.
        text = top.object("text_config", None)
        if text is not None and text.has("tie_word_embeddings"):
            return text.bool("tie_word_embeddings")
        return top.bool("tie_word_embeddings", None)

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

"""Video-LLaVA (LanguageBind/Video-LLaVA-7B-hf): two CLIP towers at 224 px, one projector.

Images go through ``image_tower`` (layer -2, class token dropped under "default": 256
tokens). Video frames each go through ``video_tower`` on their own (no temporal layers in
the HF port), layer -2, and keep the class token whatever the select strategy says:
257 tokens per frame, frames concatenated, so 8 frames → 2056 tokens.

transformers 4.48.3 (the test oracle) notes:
* ``VideoLlavaProcessor`` counts video tokens as ((S/p)² + num_additional_image_tokens) · F
  and only subtracts the class token for images; ``get_video_features`` never applies the
  select strategy. We count per video; 4.48.3 uses the first video's frame count for every
  video of a batch (and the image size of the last kind processed), which agree here.
* 4.48.3's ``VideoLlavaProcessor.__call__`` fails on a text-only prompt (``encoded_images``
  is unbound); the prompt then is just the tokenized text, which is what we produce.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import numpy as np

from .. import processing as px
from ..errors import ModelError
from ..lazy import lazy
from .base import Family, MediaInput

if TYPE_CHECKING:  # annotations only: torch loads lazily
    from torch import nn

torch = lazy("torch")


class VideoLlava(Family):
    name = "video_llava"
    title = "Video-LLaVA"
    model_types = ("video_llava",)
    architectures = ("VideoLlavaForConditionalGeneration",)
    defaults = {"image_token_index": 32000, "video_token_index": 32001, "vision_feature_layer": -2,
                "vision_feature_select_strategy": "default", "projector_hidden_act": "gelu",
                "multimodal_projector_bias": True}
    trained_frames: ClassVar[int] = 8  # the checkpoint was trained on exactly 8 frames per video
    towers = ("image_tower", "video_tower")

    def __init__(self, checkpoint) -> None:
        super().__init__(checkpoint)
        # The hub vision_config stores no image_size: CLIPVisionConfig's default 224 applies
        # (VisionConfig.from_hf fills it in).
        tile = self.vision_config.image_size
        # One VideoLlavaImageProcessor preprocesses images and video frames alike.
        self.pixels = px.PixelConfig.from_dict(checkpoint.preprocessor, default_size=tile,
                                                   source=str(checkpoint.folder / "preprocessor_config.json"))
        if self.pixels.tile != tile:
            raise ModelError(f"preprocessor view {self.pixels.tile}px does not match the "
                             f"vision tower's {tile}px")


    def token_ids(self) -> dict[str, int]:
        return {"image": int(self.config["image_token_index"]),
                "video": int(self.config["video_token_index"])}

    # -- token counts -------------------------------------------------------------------
    @property
    def tokens_per_frame(self) -> int:
        """Every token of the tower, class token included."""
        return self.vision_config.grid ** 2 + (1 if self.vision_config.has_class_token else 0)

    def video_tokens(self, num_frames: int) -> int:
        return self.tokens_per_frame * num_frames

    # -- media ---------------------------------------------------------------------------
    def prepare_image(self, image: np.ndarray) -> MediaInput:
        pixels = torch.from_numpy(px.standard_view(image, self.pixels))[None]
        height, width = image.shape[:2]
        return MediaInput("image", pixels, self.tokens_per_view, self.token_ids()["image"], (height, width))

    def prepare_video(self, frames: np.ndarray) -> MediaInput:
        pixels = torch.from_numpy(np.stack([px.standard_view(f, self.pixels) for f in frames]))
        return MediaInput("video", pixels, self.video_tokens(len(frames)),
                          self.token_ids()["video"], tuple(frames.shape[1:3]))

    def tower(self, model: nn.Module, item: MediaInput) -> nn.Module:
        """Images and videos have a tower each."""
        if item.kind == "image":
            return model.image_tower
        if item.kind == "video":
            return model.video_tower
        raise ModelError(f"{self.title} does not take {item.kind}s")

    def encode(self, model: nn.Module, item: MediaInput, *, hidden: torch.Tensor | None = None) -> torch.Tensor:
        width = model.projector.fc2.out_features
        self.tower(model, item)  # an unknown kind fails here, before any work
        features = self.run_tower(model, item, hidden)  # video: (frames, 257, vision)
        if item.kind == "image":
            features = self.select_features(features)
        return model.projector(features).reshape(-1, width)

"""LLaVA-NeXT-Video: LLaVA-NeXT's anyres images plus videos whose frames are average-
pooled 2×2 on the vision grid (576 → 144 tokens per frame at 336 px), no newlines."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .. import processing as px
from ..errors import ModelError
from ..lazy import lazy
from ..validate import Fields
from .base import MediaInput
from .llava_next import LlavaNext

if TYPE_CHECKING:  # annotations only: torch loads lazily
    from torch import nn

torch = lazy("torch")
F = lazy("torch.nn.functional")


class LlavaNextVideo(LlavaNext):
    name = "llava_next_video"
    title = "LLaVA-NeXT-Video"
    model_types = ("llava_next_video",)
    architectures = ("LlavaNextVideoForConditionalGeneration",)
    defaults = {**LlavaNext.defaults, "image_token_index": 32001, "video_token_index": 32000,
                "spatial_pool_mode": "average", "spatial_pool_stride": 2}

    def __init__(self, checkpoint) -> None:
        super().__init__(checkpoint)
        top = Fields(self.config, self.source)
        self.pool_mode = top.str("spatial_pool_mode", "average", choices=("average", "max"))
        grid = self.vision_config.grid
        self.pool_stride = top.int("spatial_pool_stride", 2, lo=1, hi=grid)
        tile = self.vision_config.image_size
        # Frames: shortest edge → tile, centre crop, no anyres.
        self.video_pixels = px.PixelConfig.from_dict(
            {k: v for k, v in checkpoint.preprocessor.items() if k != "image_grid_pinpoints"},
            default_size=tile, source=str(checkpoint.folder / "preprocessor_config.json"))
        if self.video_pixels.tile != tile:
            raise ModelError(f"preprocessor video frames of {self.video_pixels.tile}px do not match the "
                             f"vision tower's {tile}px")

    def token_ids(self) -> dict[str, int]:
        return {"image": int(self.config["image_token_index"]),
                "video": int(self.config["video_token_index"])}

    @property
    def tokens_per_frame(self) -> int:
        pooled = self.vision_config.grid // self.pool_stride
        return pooled * pooled

    def video_tokens(self, num_frames: int) -> int:
        return self.tokens_per_frame * num_frames

    def prepare_video(self, frames: np.ndarray) -> MediaInput:
        pixels = torch.from_numpy(np.stack([px.standard_view(f, self.video_pixels) for f in frames]))
        return MediaInput("video", pixels, self.video_tokens(len(frames)),
                          self.token_ids()["video"], tuple(frames.shape[1:3]))

    def encode(self, model: nn.Module, item: MediaInput, *, hidden: torch.Tensor | None = None) -> torch.Tensor:
        if item.kind == "image":
            return self.encode_anyres(model, item, hidden=hidden)
        features = self.select_features(self.run_tower(model, item, hidden))
        frames, tokens, width = features.shape
        grid = self.vision_config.grid
        if tokens != grid * grid:
            raise ModelError(f"{self.title} video pooling needs the class token dropped "
                             f"(vision_feature_select_strategy 'default')")
        fmap = features.transpose(1, 2).reshape(frames, width, grid, grid)
        pool = F.avg_pool2d if self.pool_mode == "average" else F.max_pool2d
        fmap = pool(fmap, kernel_size=self.pool_stride, stride=self.pool_stride)
        pooled = fmap.flatten(2).transpose(1, 2)  # (frames, pooled tokens, vision hidden)
        return model.projector(pooled).reshape(-1, model.projector.fc2.out_features)

"""LLaVA-NeXT (v1.6): CLIP-336 with "anyres" tiling, unpadding and a learned newline."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .. import processing as px
from ..errors import ModelError
from ..lazy import lazy
from ..validate import Fields, check_multiple
from .base import Family, MediaInput

if TYPE_CHECKING:  # annotations only: torch loads lazily
    from torch import nn

torch = lazy("torch")

NEXT_PINPOINTS = ((336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008))


class LlavaNext(Family):
    name = "llava_next"
    title = "LLaVA-NeXT"
    model_types = ("llava_next",)
    architectures = ("LlavaNextForConditionalGeneration",)
    image_newline = True
    defaults = {"image_token_index": 32000, "vision_feature_layer": -2,
                "vision_feature_select_strategy": "default", "projector_hidden_act": "gelu",
                "multimodal_projector_bias": True}

    def __init__(self, checkpoint) -> None:
        super().__init__(checkpoint)
        # The model tiles features by the config's pinpoints, the processor by its own;
        # they agree in every published checkpoint.
        self.pinpoints = Fields(self.config, self.source).pinpoints("image_grid_pinpoints", NEXT_PINPOINTS)
        tile = self.vision_config.image_size
        pre_source = str(checkpoint.folder / "preprocessor_config.json")
        self.image_pixels = px.PixelConfig.from_dict(checkpoint.preprocessor, default_size=tile,
                                                     pinpoints=self.pinpoints, source=pre_source)
        if self.image_pixels.tile != tile:
            raise ModelError(f"preprocessor tile {self.image_pixels.tile}px does not match the "
                             f"vision tower's {tile}px")
        check_multiple(self.source, "image_grid_pinpoints", self.pinpoints, tile)
        check_multiple(pre_source, "image_grid_pinpoints", self.image_pixels.pinpoints, tile)

    def token_ids(self) -> dict[str, int]:
        return {"image": int(self.config["image_token_index"])}

    # -- images ------------------------------------------------------------------------
    def grid_after_unpad(self, height: int, width: int) -> tuple[int, int]:
        rows, cols = px.select_best_resolution(height, width, self.pinpoints)
        tile = self.vision_config.image_size
        grid = self.vision_config.grid
        return px.unpadded_shape(height, width, rows // tile * grid, cols // tile * grid)

    def image_tokens(self, height: int, width: int) -> int:
        """Base view + unpadded feature map with one newline per row."""
        rows, cols = self.grid_after_unpad(height, width)
        return self.tokens_per_view + rows * (cols + 1)

    def prepare_image(self, image: np.ndarray) -> MediaInput:
        views = px.anyres_views(image, self.image_pixels)
        pixels = torch.from_numpy(np.stack([px.standard_view(v, self.image_pixels) for v in views]))
        height, width = image.shape[:2]
        return MediaInput("image", pixels, self.image_tokens(height, width),
                          self.token_ids()["image"], (height, width))

    def encode(self, model: nn.Module, item: MediaInput, *, hidden: torch.Tensor | None = None) -> torch.Tensor:
        if item.kind != "image":
            raise ModelError(f"{self.title} does not take {item.kind}s")
        return self.encode_anyres(model, item, hidden=hidden)

    def encode_anyres(self, model: nn.Module, item: MediaInput, *,
                      hidden: torch.Tensor | None = None) -> torch.Tensor:
        features = self.select_features(self.run_tower(model, item, hidden))
        features = model.projector(features)  # (views, tokens, hidden)
        base, tiles = features[0], features[1:]
        grid = self.vision_config.grid
        tile_px = self.vision_config.image_size
        rows_px, cols_px = px.select_best_resolution(*item.size, self.pinpoints)
        rows, cols = rows_px // tile_px, cols_px // tile_px
        width = features.shape[-1]
        # (rows, cols, grid, grid, width) → one (width, rows*grid, cols*grid) map
        fmap = tiles.reshape(rows, cols, grid, grid, width).permute(4, 0, 2, 1, 3)
        fmap = fmap.reshape(width, rows * grid, cols * grid)
        keep_h, keep_w = px.unpadded_shape(*item.size, rows * grid, cols * grid)
        top, left = (rows * grid - keep_h) // 2, (cols * grid - keep_w) // 2
        fmap = fmap[:, top:top + keep_h, left:left + keep_w]
        fmap = self.reduce_feature_map(fmap)
        newline = model.image_newline.to(fmap.dtype)[:, None, None].expand(width, fmap.shape[1], 1)
        fmap = torch.cat((fmap, newline), dim=2)  # one newline column per row
        return torch.cat((base, fmap.flatten(1).transpose(0, 1)), dim=0)

    def reduce_feature_map(self, fmap: torch.Tensor) -> torch.Tensor:
        """Hook for families that shrink large maps (OneVision's anyres_max)."""
        return fmap

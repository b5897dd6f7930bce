"""LLaVA-OneVision: SigLIP-384 (no class token, last layer, all 729 tokens), a Qwen2
decoder, anyres over 36 pinpoints with "anyres_max_9" downsampling, and videos whose
frames are bilinearly pooled 27×27 → 14×14 with one newline after the last frame.

Token counts (hub geometry: tile 384, 27×27 = 729 tokens per view):

* image: 729 base tokens + h″·(w″+1), where h′×w′ is the unpadded feature map of the
  anyres tiles and h″×w″ that map shrunk by r = sqrt(h′w′ / (9·27²)) when r > 1.1;
* video of F frames: 196·F + 1.

transformers 4.48.3 is the reference these rules are checked against. Where newer
transformers (the 5.x pipeline notes) differ, the 4.48.3 behaviour is what we do, and the
difference is noted where it happens:

* several images in one prompt: 4.48.3's processor tiles every image with anyres, exactly
  as a single image. Newer versions pad each to a square and give it 729 + 1 tokens; that
  path exists here (``square_multi_image``) but is off, since 4.48.3 is the oracle.
* 4.48.3's processor counts the unpadded rows with a plain ``int()`` where its model uses
  ``int(round(x, 7))``; we use the model's rule (the only one that yields as many features
  as placeholders; where the two disagree 4.48.3 itself fails with a count mismatch).
* 4.48.3's processor always downsamples against 9 tiles while its model reads
  ``vision_aspect_ratio``; we follow the config (identical for every published checkpoint).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, ClassVar, Sequence

import numpy as np

from .. import processing as px
from ..checkpoint import read_optional_json
from ..errors import ModelError
from ..lazy import lazy
from ..validate import Fields, check_multiple
from .base import Family, MediaInput
from .llava_next import LlavaNext

if TYPE_CHECKING:
    from torch import nn

    from ..media import Media

torch = lazy("torch")
F = lazy("torch.nn.functional")

HUB_TILE = 384
HUB_PATCH = 14
HUB_MAX_TILES = 9  # "anyres_max_9"
# (h, w) with h as the outer loop, as in every config and preprocessor_config.
ONEVISION_PINPOINTS = tuple((h, w) for h in range(384, 2305, 384) for w in range(384, 2305, 384))
SIGLIP_MEAN = SIGLIP_STD = (0.5, 0.5, 0.5)

# preprocessor_config.json of the llava-hf OneVision repos (images and videos alike).
_HUB_PIXELS = {"size": {"height": HUB_TILE, "width": HUB_TILE}, "image_mean": SIGLIP_MEAN,
               "image_std": SIGLIP_STD, "resample": px.BICUBIC, "rescale_factor": 1 / 255}

# transformers 4.48.3's LlavaOnevisionConfig when config.json has no vision_config at all
# (note 14 heads there, where the hub configs store 16).
_DEFAULT_SIGLIP = {"model_type": "siglip_vision_model", "hidden_size": 1152, "intermediate_size": 4304,
                   "patch_size": 14, "image_size": 384, "num_hidden_layers": 26, "num_attention_heads": 14}


# ---------------------------------------------------------------------------------------
# Token counts as pure functions (no model, no checkpoint)


def anyres_max_shape(rows: int, cols: int, grid: int, max_tiles: int = HUB_MAX_TILES) -> tuple[int, int]:
    """The (rows, cols) an unpadded feature map is shrunk to under "anyres_max_N".

    r = sqrt(rows·cols / (N·grid²)); when r > 1.1 the map is resized to
    (int(rows // r), int(cols // r)), the floor of the float quotients; else it is kept.
    """
    ratio = math.sqrt(rows * cols / (max_tiles * grid * grid))
    if ratio > 1.1:
        return int(rows // ratio), int(cols // ratio)
    return rows, cols


def onevision_image_grid(height: int, width: int, *, tile: int = HUB_TILE, patch: int = HUB_PATCH,
                         pinpoints: Sequence[tuple[int, int]] = ONEVISION_PINPOINTS,
                         max_tiles: int = HUB_MAX_TILES) -> tuple[int, int]:
    """h″×w″: the tiles' feature map after unpadding and anyres_max downsampling."""
    grid = tile // patch
    best_h, best_w = px.select_best_resolution(height, width, pinpoints)
    rows, cols = px.unpadded_shape(height, width, best_h // tile * grid, best_w // tile * grid)
    return anyres_max_shape(rows, cols, grid, max_tiles)


def onevision_image_tokens(height: int, width: int, *, tile: int = HUB_TILE, patch: int = HUB_PATCH,
                           pinpoints: Sequence[tuple[int, int]] = ONEVISION_PINPOINTS,
                           max_tiles: int = HUB_MAX_TILES) -> int:
    """Placeholder tokens of one anyres image: grid² base tokens + h″·(w″+1)."""
    rows, cols = onevision_image_grid(height, width, tile=tile, patch=patch, pinpoints=pinpoints,
                                      max_tiles=max_tiles)
    return (tile // patch) ** 2 + rows * (cols + 1)


def onevision_square_image_tokens(*, tile: int = HUB_TILE, patch: int = HUB_PATCH) -> int:
    """One padded-to-square view plus one newline (multi-image prompts in transformers ≥ 5;
    4.48.3 tiles those images with anyres instead, see ``onevision_image_tokens``)."""
    return (tile // patch) ** 2 + 1


def onevision_video_tokens(num_frames: int, *, tile: int = HUB_TILE, patch: int = HUB_PATCH) -> int:
    """ceil(grid/2)² tokens per frame, plus one newline after the last frame."""
    pooled = math.ceil(tile // patch / 2)
    return pooled * pooled * num_frames + 1


def expand_to_square(image: np.ndarray, mean: Sequence[float]) -> np.ndarray:
    """Pad (H, W, 3) uint8 to a centred square filled with the mean colour int(mean·255)."""
    height, width = image.shape[:2]
    if height == width:
        return image
    side = max(height, width)
    canvas = np.empty((side, side, 3), dtype=image.dtype)
    canvas[...] = np.asarray([int(m * 255) for m in mean], dtype=image.dtype)
    top, left = (side - height) // 2, (side - width) // 2
    canvas[top:top + height, left:left + width] = image
    return canvas


def _max_tiles(aspect_ratio: str, source: str = "config.json") -> int:
    prefix = "anyres_max_"
    digits = aspect_ratio[len(prefix):] if aspect_ratio.startswith(prefix) else ""
    if digits.isascii() and digits.isdigit() and 1 <= int(digits) <= 1000:
        return int(digits)
    raise ModelError(f"{source}: unsupported vision_aspect_ratio {aspect_ratio!r} "
                     f"(supported: anyres_max_N, N from 1 to 1000)")


def _pixel_config(raw: dict, pinpoints: Sequence[Sequence[int]] = (), *,
                  source: str = "preprocessor_config.json") -> px.PixelConfig:
    """A OneVision preprocessor config: resize straight to height×width, no crop.

    Keys the file leaves out take the hub's values (SigLIP 0.5 mean/std); 4.48.3's
    processor classes would fall back to CLIP's mean/std there, but every published
    preprocessor_config.json stores 0.5.
    """
    fields = px.Fields(raw, source)
    shortest, height, width = px.pixel_size(fields, default=HUB_TILE)
    if height is None or width is None:  # 4.48.3 reads {"shortest_edge": s} (or s) as s×s here
        height = width = shortest
    if height != width:
        raise ModelError(f"{source}: LLaVA-OneVision needs square views, size says {height}×{width}")
    points = fields.pinpoints("image_grid_pinpoints", None) or pinpoints
    return px.PixelConfig(shortest_edge=None, height=height, width=width, crop=None,
                          mean=fields.channels("image_mean", SIGLIP_MEAN),
                          std=fields.channels("image_std", SIGLIP_STD, positive=True),
                          rescale=fields.float("rescale_factor", 1 / 255, lo=0, hi=1e6, lo_open=True),
                          resample=px.resample_code(fields),
                          pinpoints=tuple((int(h), int(w)) for h, w in points))


class LlavaOnevision(LlavaNext):
    name = "llava_onevision"
    title = "LLaVA-OneVision"
    model_types = ("llava_onevision",)
    architectures = ("LlavaOnevisionForConditionalGeneration",)
    defaults = {"image_token_index": 151646, "video_token_index": 151647, "vision_feature_layer": -1,
                "vision_feature_select_strategy": "full", "projector_hidden_act": "gelu",
                "multimodal_projector_bias": True, "vision_aspect_ratio": "anyres_max_9",
                "image_grid_pinpoints": ONEVISION_PINPOINTS}
    # Several images in one prompt: False tiles each with anyres (transformers 4.48.3);
    # True pads each to a square, one view, 729 + 1 tokens (newer transformers).
    square_multi_image: ClassVar[bool] = False
    # LLaVA-Video-7B/72B-Qwen2 are this network trained with a time instruction before each
    # video question; their config says "add_time_instruction": true (conversions may keep it).
    takes_time_instruction: ClassVar[bool] = True

    def __init__(self, checkpoint) -> None:
        Family.__init__(self, checkpoint)  # not LlavaNext's: its pixel rules are CLIP's
        top = Fields(self.config, self.source)
        self.declares_time_instruction = top.bool("add_time_instruction", False)
        self.max_tiles = _max_tiles(top.str("vision_aspect_ratio", "anyres_max_9"), self.source)
        self.pinpoints = top.pinpoints("image_grid_pinpoints", ONEVISION_PINPOINTS)
        tile = self.vision_config.image_size
        check_multiple(self.source, "image_grid_pinpoints", self.pinpoints, tile)
        folder = checkpoint.folder
        self.image_pixels = _pixel_config(checkpoint.preprocessor, self.pinpoints,
                                          source=str(folder / "preprocessor_config.json"))
        check_multiple(str(folder / "preprocessor_config.json"), "image_grid_pinpoints",
                       self.image_pixels.pinpoints, tile)
        # 4.48.3 saves the video settings in video_processor/; without that folder its
        # video processor is loaded from the top-level preprocessor_config.json.
        video_path = folder / "video_processor" / "preprocessor_config.json"
        video_raw = read_optional_json(video_path)
        if video_raw:
            self.video_pixels = _pixel_config(video_raw, source=str(video_path))
        else:
            self.video_pixels = _pixel_config(checkpoint.preprocessor,
                                              source=str(folder / "preprocessor_config.json"))
        for what, cfg in (("preprocessor", self.image_pixels), ("video preprocessor", self.video_pixels)):
            if cfg.tile != tile:
                raise ModelError(f"{what} views of {cfg.tile}px do not match the vision tower's {tile}px")

    def _tie(self, top: Fields) -> bool | None:
        # transformers 4.48.3 ties the LM head by text_config's flag (the composite's
        # tie_weights delegates to the language model); the hub 0.5B config sets it there.
        # A config that only says so at the top level is honoured too.
        text = top.object("text_config", None)
        if text is not None and text.has("tie_word_embeddings"):
            return text.bool("tie_word_embeddings")
        return top.bool("tie_word_embeddings", False)

    def _text_raw(self, top: Fields) -> dict:
        # A Qwen2 decoder unless text_config says otherwise.
        text = top.object("text_config", None)
        return {"model_type": "qwen2", **(text.raw if text is not None else {})}

    def _vision_raw(self) -> dict:
        vision = Fields(self.config, self.source).object("vision_config", None)
        if vision is None or not vision.raw:
            return dict(_DEFAULT_SIGLIP)
        return {"model_type": "siglip_vision_model", **vision.raw}

    def token_ids(self) -> dict[str, int]:
        return {"image": int(self.config["image_token_index"]),
                "video": int(self.config["video_token_index"])}

    # -- token counts ------------------------------------------------------------------
    def image_grid(self, height: int, width: int) -> tuple[int, int]:
        """h″×w″ of an anyres image."""
        rows, cols = self.grid_after_unpad(height, width)
        return anyres_max_shape(rows, cols, self.vision_config.grid, self.max_tiles)

    def image_tokens(self, height: int, width: int) -> int:
        rows, cols = self.image_grid(height, width)
        return self.tokens_per_view + rows * (cols + 1)

    def square_image_tokens(self) -> int:
        return self.tokens_per_view + 1

    @property
    def pooled_grid(self) -> int:
        return math.ceil(self.vision_config.grid / 2)

    def video_tokens(self, num_frames: int) -> int:
        return self.pooled_grid ** 2 * num_frames + 1

    # -- media -------------------------------------------------------------------------
    def prepare(self, media: Sequence[Media]) -> list[MediaInput]:
        square = self.square_multi_image and sum(m.kind == "image" for m in media) > 1
        items = []
        for m in media:
            if m.kind == "video":
                items.append(self.prepare_video(m.frames))
            elif square:
                items.append(self.prepare_square_image(m.frames[0]))
            else:
                items.append(self.prepare_image(m.frames[0]))  # anyres (LlavaNext's, our pixels)
        return items

    def prepare_square_image(self, image: np.ndarray) -> MediaInput:
        view = expand_to_square(image, self.image_pixels.mean)
        pixels = torch.from_numpy(px.standard_view(view, self.image_pixels)[None])
        return MediaInput("image", pixels, self.square_image_tokens(), self.token_ids()["image"],
                          tuple(image.shape[:2]))

    def prepare_video(self, frames: np.ndarray) -> MediaInput:
        # Each frame squashed to 384×384 (no aspect kept, no crop), as 4.48.3's video processor.
        pixels = torch.from_numpy(np.stack([px.standard_view(f, self.video_pixels) for f in frames]))
        return MediaInput("video", pixels, self.video_tokens(len(frames)), self.token_ids()["video"],
                          tuple(frames.shape[1:3]))

    # -- features ----------------------------------------------------------------------
    def encode(self, model: nn.Module, item: MediaInput, *, hidden: torch.Tensor | None = None) -> torch.Tensor:
        if item.kind == "video":
            return self.encode_video(model, item, hidden=hidden)
        if item.pixels.shape[0] == 1:  # one square view: its tokens, then one newline
            features = self._project(model, item, hidden)[0]
            return torch.cat((features, model.image_newline[None].to(features.dtype)), dim=0)
        return self.encode_anyres(model, item, hidden=hidden)

    def _project(self, model: nn.Module, item: MediaInput, hidden: torch.Tensor | None = None) -> torch.Tensor:
        return model.projector(self.select_features(self.run_tower(model, item, hidden)))

    def reduce_feature_map(self, fmap: torch.Tensor) -> torch.Tensor:
        """anyres_max: shrink a (hidden, h′, w′) map bilinearly when it exceeds N tiles by 10%."""
        rows, cols = fmap.shape[1:]
        new = anyres_max_shape(rows, cols, self.vision_config.grid, self.max_tiles)
        if new == (rows, cols):
            return fmap
        # align_corners=False, no antialias: 4.48.3's interpolate(..., mode="bilinear").
        return F.interpolate(fmap[None], size=list(new), mode="bilinear")[0]

    def encode_video(self, model: nn.Module, item: MediaInput, *,
                     hidden: torch.Tensor | None = None) -> torch.Tensor:
        """Per frame: SigLIP → projector → 27×27 map → bilinear to 14×14; then one newline."""
        features = self._project(model, item, hidden)  # (frames, tokens, text hidden)
        frames, tokens, width = features.shape
        grid = self.vision_config.grid
        if tokens != grid * grid:
            raise ModelError(f"{self.title} video pooling needs all {grid * grid} patch tokens, got {tokens}")
        fmap = features.reshape(frames, grid, grid, width).permute(0, 3, 1, 2)
        fmap = F.interpolate(fmap, size=[self.pooled_grid, self.pooled_grid], mode="bilinear")
        pooled = fmap.permute(0, 2, 3, 1).reshape(-1, width)
        return torch.cat((pooled, model.image_newline[None].to(pooled.dtype)), dim=0)

"""Pixel preprocessing and anyres geometry: pure functions over uint8 RGB arrays.

Every resize goes through Pillow on uint8 data, as the reference processors do, so our
pixel values match theirs to float32 rounding rather than to "about 1/255".
Arrays are channels-last ``(H, W, 3)`` uint8 until :func:`normalize`, which returns
channels-first float32 ``(3, H, W)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image

from .validate import MAX_IMAGE_SIDE, Fields, is_int as _is_int

BICUBIC = 3  # PIL.Image.Resampling.BICUBIC; the value the hub's preprocessor configs store
RESAMPLE_CODES = (0, 1, 2, 3, 4, 5)  # NEAREST, LANCZOS, BILINEAR, BICUBIC, BOX, HAMMING

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class PixelConfig:
    """What a checkpoint's preprocessor_config.json says about pixels."""

    shortest_edge: int | None  # resize the short side to this (None: resize to height x width)
    height: int  # size target when shortest_edge is None
    width: int
    crop: int | None  # centre-crop to crop x crop (None: no crop)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    rescale: float = 1 / 255
    resample: int = BICUBIC
    pinpoints: tuple[tuple[int, int], ...] = ()  # anyres candidate (height, width) pairs

    @classmethod
    def from_dict(cls, raw: dict, *, default_size: int, mean=CLIP_MEAN, std=CLIP_STD,
                  pinpoints: Sequence[Sequence[int]] = (), source: str = "preprocessor_config.json") -> "PixelConfig":
        """Read and check a CLIP-style preprocessor config (``source`` names it in errors)."""
        fields = Fields(raw, source)
        shortest, height, width = pixel_size(fields, default=None)
        if shortest is None and height is None:
            shortest = default_size
        crop_px = None
        crop = fields.raw.get("crop_size")
        if _is_int(crop):
            crop_px = fields.int("crop_size", lo=1, hi=MAX_IMAGE_SIDE)
        elif crop is not None:
            crop_px = fields.object("crop_size").int("height", lo=1, hi=MAX_IMAGE_SIDE)
        if fields.bool("do_center_crop", crop is not None or shortest is not None):
            crop_px = crop_px or default_size
        else:
            crop_px = None
        points = fields.pinpoints("image_grid_pinpoints", None) or pinpoints
        return cls(
            shortest_edge=shortest,
            height=height if height is not None else shortest,
            width=width if width is not None else shortest,
            crop=crop_px,
            mean=fields.channels("image_mean", mean),
            std=fields.channels("image_std", std, positive=True),
            rescale=fields.float("rescale_factor", 1 / 255, lo=0, hi=1e6, lo_open=True),
            resample=resample_code(fields),
            pinpoints=tuple((int(h), int(w)) for h, w in points),
        )

    @property
    def tile(self) -> int:
        """Side of one square view fed to the vision tower."""
        if self.crop is not None:
            return self.crop
        if self.shortest_edge is not None:
            return self.shortest_edge
        return min(self.height, self.width)


def pixel_size(fields: Fields, default: int | None) -> tuple[int | None, int | None, int | None]:
    """A preprocessor's ``size``: (shortest_edge, height, width), each None when not given.
    An integer means a shortest edge; an object gives ``shortest_edge`` or ``height`` and
    ``width``. Absent: (default, None, None)."""
    size = fields.raw.get("size")
    if size is None:
        return default, None, None
    if _is_int(size):
        return fields.int("size", lo=1, hi=MAX_IMAGE_SIDE), None, None
    sub = fields.object("size")
    shortest = sub.int("shortest_edge", None, lo=1, hi=MAX_IMAGE_SIDE)
    height = sub.int("height", None, lo=1, hi=MAX_IMAGE_SIDE)
    width = sub.int("width", None, lo=1, hi=MAX_IMAGE_SIDE)
    if shortest is None and (height is None or width is None):
        raise fields.error("size", "an integer or an object with shortest_edge, or height and width", size)
    return shortest, height, width


def resample_code(fields: Fields) -> int:
    """``resample``: one of Pillow's filter codes (0 nearest … 5 hamming; 3 is bicubic)."""
    value = fields.raw.get("resample")
    if value is None:
        return BICUBIC
    if not _is_int(value) or value not in RESAMPLE_CODES:
        raise fields.error("resample", "a Pillow resampling filter code (0 to 5; 3 is bicubic)", value)
    return value


def resize(image: np.ndarray, height: int, width: int, resample: int = BICUBIC) -> np.ndarray:
    """Resize (H, W, 3) uint8 with Pillow."""
    if image.shape[0] == height and image.shape[1] == width:
        return image
    pil = Image.fromarray(image)
    return np.asarray(pil.resize((width, height), resample=resample))


def shortest_edge_size(height: int, width: int, edge: int) -> tuple[int, int]:
    """Short side → ``edge``, long side scaled and floored."""
    if width <= height:
        return int(edge * height / width), edge
    return edge, int(edge * width / height)


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
    """Centre crop to size × size, zero-padding first when the image is smaller."""
    height, width = image.shape[:2]
    if height < size or width < size:
        top_pad = (size - height) // 2 if height < size else 0
        left_pad = (size - width) // 2 if width < size else 0
        padded = np.zeros((max(height, size), max(width, size), 3), dtype=image.dtype)
        padded[top_pad:top_pad + height, left_pad:left_pad + width] = image
        image, height, width = padded, padded.shape[0], padded.shape[1]
    top = (height - size) // 2
    left = (width - size) // 2
    return image[top:top + size, left:left + size]


def normalize(image: np.ndarray, cfg: PixelConfig) -> np.ndarray:
    """uint8 (H, W, 3) → float32 (3, H, W): rescale then (x - mean) / std.

    The rescale product is formed in float64 and rounded to float32 before normalizing,
    the order the reference uses, so results agree bit for bit in practice.
    """
    scaled = (image.astype(np.float64) * cfg.rescale).astype(np.float32)
    mean = np.asarray(cfg.mean, dtype=np.float32)
    std = np.asarray(cfg.std, dtype=np.float32)
    return np.ascontiguousarray(((scaled - mean) / std).transpose(2, 0, 1))


def standard_view(image: np.ndarray, cfg: PixelConfig) -> np.ndarray:
    """The per-view pipeline: resize, optional centre crop, rescale, normalize → (3, S, S)."""
    height, width = image.shape[:2]
    if cfg.shortest_edge is not None:
        new_h, new_w = shortest_edge_size(height, width, cfg.shortest_edge)
    else:
        new_h, new_w = cfg.height, cfg.width
    image = resize(image, new_h, new_w, cfg.resample)
    if cfg.crop is not None:
        image = center_crop(image, cfg.crop)
    return normalize(image, cfg)


# ---------------------------------------------------------------------------------------
# anyres geometry (LLaVA-NeXT)


def select_best_resolution(height: int, width: int,
                           candidates: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """The candidate (h, w) that keeps the most image pixels, then wastes the fewest.

    Ties on both keep the earlier candidate, so list order matters.
    """
    best = candidates[0]
    best_effective, best_wasted = -1, math.inf
    for cand_h, cand_w in candidates:
        scale = min(cand_w / width, cand_h / height)
        effective = min(int(width * scale) * int(height * scale), width * height)
        wasted = cand_h * cand_w - effective
        if effective > best_effective or (effective == best_effective and wasted < best_wasted):
            best, best_effective, best_wasted = (cand_h, cand_w), effective, wasted
    return best


def fit_within(height: int, width: int, target_h: int, target_w: int) -> tuple[int, int]:
    """Aspect-preserving size that fills the target along its tighter side (ceil, clamped)."""
    scale_w, scale_h = target_w / width, target_h / height
    if scale_w < scale_h:
        return min(math.ceil(height * scale_w), target_h), target_w
    return target_h, min(math.ceil(width * scale_h), target_w)


def anyres_views(image: np.ndarray, cfg: PixelConfig) -> list[np.ndarray]:
    """[base view, tile(0,0), tile(0,1), …] as uint8 arrays, before the per-view pipeline.

    The canvas gets the same padding on both sides (``slack // 2``), as the reference
    does; with odd slack the canvas is one pixel short and the last row/column of tiles
    is a pixel narrower, which the per-view resize then stretches back.
    """
    height, width = image.shape[:2]
    target_h, target_w = select_best_resolution(height, width, cfg.pinpoints)
    new_h, new_w = fit_within(height, width, target_h, target_w)
    resized = resize(image, new_h, new_w, cfg.resample)
    pad_y, pad_x = (target_h - new_h) // 2, (target_w - new_w) // 2
    canvas = np.pad(resized, ((pad_y, pad_y), (pad_x, pad_x), (0, 0)))
    tile = cfg.tile
    tiles = [canvas[y:y + tile, x:x + tile]
             for y in range(0, canvas.shape[0], tile)
             for x in range(0, canvas.shape[1], tile)]
    base_side = cfg.shortest_edge if cfg.shortest_edge is not None else min(cfg.height, cfg.width)
    base = resize(image, base_side, base_side, cfg.resample)
    return [base, *tiles]


def anyres_grid(height: int, width: int, cfg: PixelConfig) -> tuple[int, int]:
    """Tiles (rows, cols) the anyres split of an image produces."""
    target_h, target_w = select_best_resolution(height, width, cfg.pinpoints)
    return target_h // cfg.tile, target_w // cfg.tile


def unpadded_shape(height: int, width: int, grid_h: int, grid_w: int) -> tuple[int, int]:
    """Rows and columns of a (grid_h, grid_w) feature map left after removing padding.

    The map covers the padded canvas; the original image occupies the centre, so the
    same number of rows (or columns) comes off each side.
    """
    if width / height > grid_w / grid_h:
        new_h = int(round(height * (grid_w / width), 7))
        pad = (grid_h - new_h) // 2
        return grid_h - 2 * pad, grid_w
    new_w = int(round(width * (grid_h / height), 7))
    pad = (grid_w - new_w) // 2
    return grid_h, grid_w - 2 * pad


def image_to_array(image: Image.Image | np.ndarray) -> np.ndarray:
    """Any PIL image or array → (H, W, 3) uint8 RGB."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    return array

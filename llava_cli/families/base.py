"""What every family shares: the rules base class and the media-item contract (the
composite module they build is nn/model.py).

A family turns decoded media (uint8 frames) into ``MediaInput``s — pixels plus the exact
number of placeholder tokens they will occupy — and turns those pixels into embeddings
of that length. The engine splices the embeddings in at the placeholder ids.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Sequence

from ..checkpoint import Checkpoint
from ..errors import ModelError
from ..nn.config import TextConfig, VisionConfig
from ..validate import MAX_LAYERS, Fields

if TYPE_CHECKING:  # torch is imported when media are prepared or a model is built
    import numpy as np
    import torch
    from torch import nn

    from ..media import Media


@dataclass
class MediaInput:
    """One image or video, preprocessed, with the token count it expands to."""

    kind: str  # "image" | "video"
    pixels: torch.Tensor  # image: (views, 3, S, S); video: (frames, 3, S, S); float32
    num_tokens: int
    placeholder_id: int
    size: tuple[int, int]  # original (height, width)
    extra: dict = field(default_factory=dict)


class Family:
    """Rules for one checkpoint family. Subclasses set the class attributes."""

    name: ClassVar[str]
    title: ClassVar[str]
    model_types: ClassVar[tuple[str, ...]] = ()
    architectures: ClassVar[tuple[str, ...]] = ()
    defaults: ClassVar[dict] = {}
    default_frames: ClassVar[int] = 8
    trained_frames: ClassVar[int | None] = None  # a family trained on exactly this many frames
    towers: ClassVar[tuple[str, ...]] = ("vision",)  # vision tower module names
    image_newline: ClassVar[bool] = False  # has a learned image_newline vector
    # Takes LLaVA-Video's time instruction before video questions (prompt.time_instruction);
    # ``declares_time_instruction``: config.json asks for it (add_time_instruction).
    takes_time_instruction: ClassVar[bool] = False
    declares_time_instruction: bool = False

    def __init__(self, checkpoint: Checkpoint) -> None:
        self.checkpoint = checkpoint
        self.config = {**self.defaults, **checkpoint.config}
        # Every value read from config.json is checked here (type and range), so that a
        # malformed file is one error naming the field, before torch is imported.
        self.source = str(checkpoint.folder / "config.json")
        top = Fields(self.config, self.source)
        self.text_config = TextConfig.from_hf(self._text_raw(top), tie_word_embeddings=self._tie(top),
                                              source=self.source)
        self.vision_config = VisionConfig.from_hf(self._vision_raw(), source=self.source)
        self.feature_layer = top.int("vision_feature_layer", -2, lo=-MAX_LAYERS - 1, hi=MAX_LAYERS)
        self.vision_config.layers_needed(self.feature_layer)  # in range for the tower
        self.select_strategy = top.str("vision_feature_select_strategy", "default", choices=("default", "full"))
        top.str("projector_hidden_act", "gelu", choices=("gelu",))
        top.bool("multimodal_projector_bias", True)
        vocab = self.text_config.vocab_size
        for key in ("image_token_index", "video_token_index"):
            if key in self.config:
                top.int(key, lo=0, hi=vocab - 1)
        top.token_ids("eos_token_id")
        text = top.object("text_config", None)
        if text is not None:
            text.token_ids("eos_token_id")

    def _tie(self, top: Fields) -> bool | None:
        """Whether the LM head reuses the embeddings: the top-level flag, else (None)
        text_config's."""
        return top.bool("tie_word_embeddings", None)

    def _text_raw(self, top: Fields) -> dict:
        text = top.object("text_config", None)
        return text.raw if text is not None else {}

    def frames_for(self, requested: int | None, warn=None) -> int:
        """Frames per video: ``requested`` (--frames) if given, else the family's default
        (the count it was trained on, if fixed). A family trained on a fixed count
        (Video-LLaVA: 8) asked for another gets a ``warn``ing (give ``warn`` only when the
        prompt has a video)."""
        if requested is None:
            return self.trained_frames or self.default_frames
        if warn is not None and self.trained_frames and requested != self.trained_frames:
            warn(f"{self.title} was trained on {self.trained_frames} frames per video; "
                 f"{requested} may give worse answers")
        return requested

    def _vision_raw(self) -> dict:
        vision = Fields(self.config, self.source).object("vision_config", None)
        return vision.raw if vision is not None else {}

    def wants_time_instruction(self, setting: bool | None) -> bool:
        """Whether video questions get LLaVA-Video's time instruction: ``setting``
        (--time-instruction / --no-time-instruction) when given, else what config.json
        declares; never for a family that does not take it."""
        if not self.takes_time_instruction:
            return False
        return self.declares_time_instruction if setting is None else setting

    # -- model -------------------------------------------------------------------------
    def build(self) -> nn.Module:
        """The model's modules (call under ``torch.device("meta")``; the loader fills them)."""
        from ..nn.model import LlavaModel

        self.vision_config.check_buildable(self.source)
        return LlavaModel(self.text_config, self.vision_config, self.feature_layer,
                          projector_act=self.config.get("projector_hidden_act", "gelu"),
                          projector_bias=self.config.get("multimodal_projector_bias", True),
                          image_newline=self.image_newline, towers=self.towers)

    def token_ids(self) -> dict[str, int]:
        """Placeholder ids by media kind."""
        raise NotImplementedError

    # -- media -------------------------------------------------------------------------
    def prepare(self, media: Sequence[Media]) -> list[MediaInput]:
        """All media of one prompt, in order. Families whose image path depends on how
        many images a prompt has (OneVision) override this."""
        return [self.prepare_image(m.frames[0]) if m.kind == "image" else self.prepare_video(m.frames)
                for m in media]

    def prepare_image(self, image: np.ndarray) -> MediaInput:
        raise ModelError(f"{self.title} does not take images")

    def prepare_video(self, frames: np.ndarray) -> MediaInput:
        raise ModelError(f"{self.title} does not take videos")

    def encode(self, model: nn.Module, item: MediaInput, *, hidden: torch.Tensor | None = None) -> torch.Tensor:
        """MediaInput → (num_tokens, text_hidden) embeddings. ``hidden``: the tower's raw
        output for ``item.pixels`` when already computed (``encode_many``), so the tower
        is not run again."""
        raise NotImplementedError

    def tower(self, model: nn.Module, item: MediaInput) -> nn.Module:
        """The vision tower ``item`` goes through (one for every kind unless a family has
        a tower per kind)."""
        return model.vision

    def run_tower(self, model: nn.Module, item: MediaInput, hidden: torch.Tensor | None = None) -> torch.Tensor:
        """The tower's raw output for ``item.pixels``: ``hidden`` when the caller already
        has it, else one tower call on the pixels moved to the tower's device."""
        if hidden is not None:
            return hidden
        tower = self.tower(model, item)
        return tower(item.pixels.to(tower.patch_embed.weight.device))

    def encode_many(self, model: nn.Module, items: Sequence[MediaInput]) -> list[torch.Tensor]:
        """``[self.encode(model, item) for item in items]``, with one tower call per
        (tower, view shape) instead of one per item: a prompt's images and video frames
        then share the tower's passes (it still takes ``views_per_pass`` views at a time,
        which bounds activation memory), so few-view items do not each pay a pass."""
        import torch

        groups: dict[tuple[int, tuple[int, ...]], list[int]] = {}
        towers: dict[int, nn.Module] = {}
        for index, item in enumerate(items):
            tower = self.tower(model, item)
            towers[id(tower)] = tower
            groups.setdefault((id(tower), tuple(item.pixels.shape[1:])), []).append(index)
        hidden: list[torch.Tensor | None] = [None] * len(items)
        for (tower_id, _), indices in groups.items():
            tower = towers[tower_id]
            device = tower.patch_embed.weight.device
            pixels = [items[i].pixels.to(device) for i in indices]
            output = tower(pixels[0] if len(pixels) == 1 else torch.cat(pixels))
            for index, part in zip(indices, output.split([p.shape[0] for p in pixels])):
                hidden[index] = part
        return [self.encode(model, item, hidden=h) for item, h in zip(items, hidden)]

    def video_tokens(self, num_frames: int) -> int:
        """Placeholder tokens a video of ``num_frames`` frames expands to."""
        raise ModelError(f"{self.title} does not take videos")

    # -- helpers -----------------------------------------------------------------------
    @property
    def tokens_per_view(self) -> int:
        """Tokens one vision-tower view yields: the patch grid, plus the class token when
        the select strategy keeps it ("full" on CLIP)."""
        extra = 1 if self.select_strategy == "full" and self.vision_config.has_class_token else 0
        return self.vision_config.grid ** 2 + extra

    def select_features(self, hidden: torch.Tensor) -> torch.Tensor:
        """Drop the class token under the "default" strategy."""
        if self.select_strategy == "default" and self.vision_config.has_class_token:
            return hidden[:, 1:]
        return hidden

"""The family registry: config.json → the rules for that checkpoint family.

Adding a family is one module and one line in ``FAMILIES``.
"""

from __future__ import annotations

from ..errors import ModelError
from ..loading import Checkpoint
from .base import Family, MediaInput
from .llava_next import LlavaNext
from .llava_next_video import LlavaNextVideo
from .llava_onevision import LlavaOnevision
from .llava import Llava
from .video_llava import VideoLlava

FAMILIES: tuple[type[Family], ...] = (
    LlavaOnevision,
    LlavaNextVideo,
    LlavaNext,
    VideoLlava,
    Llava,
)


def family_for(checkpoint: Checkpoint) -> Family:
    """Pick the family from ``architectures`` first, then ``model_type``.

    Architectures win because the first LLaVA-NeXT-Video upload says
    ``model_type: llava_next`` while naming the video architecture.
    """
    config = checkpoint.config
    architectures = config.get("architectures") or []
    for family in FAMILIES:
        if any(a in family.architectures for a in architectures):
            return family(checkpoint)
    model_type = config.get("model_type")
    for family in FAMILIES:
        if model_type in family.model_types:
            return family(checkpoint)
    supported = ", ".join(f.title for f in FAMILIES)
    found = model_type or (architectures[0] if architectures else "nothing")
    raise ModelError(f"unsupported model type '{found}' in {checkpoint.folder / 'config.json'} "
                     f"(supported families: {supported})")


__all__ = ["FAMILIES", "Family", "MediaInput", "family_for"]

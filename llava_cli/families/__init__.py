"""The family registry: config.json → the rules for that checkpoint family.

Adding a family is one module and one line in ``FAMILIES``.
"""

from __future__ import annotations

from ..errors import ModelError
from ..checkpoint import Checkpoint
from ..validate import show
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


def family_class_for(config: dict) -> type[Family] | None:
    """The family a config.json names, from ``architectures`` first, then ``model_type``;
    None when it names none we support.

    Architectures win because the first LLaVA-NeXT-Video upload says
    ``model_type: llava_next`` while naming the video architecture.
    """
    architectures = _architectures(config)
    for family in FAMILIES:
        if any(a in family.architectures for a in architectures):
            return family
    model_type = config.get("model_type")
    for family in FAMILIES:
        if model_type in family.model_types:
            return family
    return None


def family_for(checkpoint: Checkpoint) -> Family:
    """The family rules for a checkpoint (see ``family_class_for``)."""
    config = checkpoint.config
    family = family_class_for(config)
    if family is not None:
        return family(checkpoint)
    source = checkpoint.folder / "config.json"
    architectures = _architectures(config)
    model_type = config.get("model_type")
    if model_type is not None and not isinstance(model_type, str):
        raise ModelError(f"{source}: model_type must be a string, got {show(model_type)}")
    supported = ", ".join(f.title for f in FAMILIES)
    found = model_type or (architectures[0] if architectures else "nothing")
    raise ModelError(f"unsupported model type '{found}' in {source} "
                     f"(supported families: {supported})")


def _architectures(config: dict) -> list:
    """config.json's ``architectures``: a list of class names (anything else names none)."""
    value = config.get("architectures")
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        return []
    return [a for a in value if isinstance(a, str)]


__all__ = ["FAMILIES", "Family", "MediaInput", "family_class_for", "family_for"]

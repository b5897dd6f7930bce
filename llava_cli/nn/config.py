"""The language and vision configurations, read from a hub config.json: plain data, no
torch, so that families, `llava models info` and the CLI can reason about a checkpoint
without importing torch (nn/text.py and nn/vision.py build modules from them)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import ModelError
from ..validate import (MAX_GRID, MAX_HEADS, MAX_HIDDEN, MAX_IMAGE_SIDE, MAX_INTERMEDIATE, MAX_LAYERS,
                        MAX_POSITIONS, MAX_VOCAB, Fields, show)

# Values that apply when a hub config leaves a key out (the hub files store only the
# keys that differ from their class defaults).
_TEXT_DEFAULTS = {
    "llama": dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                  num_attention_heads=32, rms_norm_eps=1e-6, rope_theta=10000.0,
                  max_position_embeddings=2048, attention_bias=False, sliding_window=None),
    "mistral": dict(vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                    num_attention_heads=32, num_key_value_heads=8, rms_norm_eps=1e-6, rope_theta=10000.0,
                    max_position_embeddings=4096 * 32, attention_bias=False, sliding_window=4096),
    "qwen2": dict(vocab_size=151936, hidden_size=4096, intermediate_size=22016, num_hidden_layers=32,
                  num_attention_heads=32, num_key_value_heads=32, rms_norm_eps=1e-6, rope_theta=10000.0,
                  max_position_embeddings=32768, attention_bias=True, sliding_window=None),
}


@dataclass(frozen=True)
class TextConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_linear_factor: float = 1.0  # linear RoPE scaling: position t → t / factor
    max_position_embeddings: int = 4096
    qkv_bias: bool = False  # Qwen1.5/Qwen2
    tie_word_embeddings: bool = False
    sliding_window: int | None = None  # keys a query sees (itself included); None = all
    sliding_window_from_layer: int = 0  # layers before this one attend fully (Qwen2's max_window_layers)
    extra: dict = field(default_factory=dict, compare=False)

    @classmethod
    def from_hf(cls, raw: dict, *, tie_word_embeddings: bool | None = None, source: str = "config.json",
                prefix: str = "text_config") -> "TextConfig":
        """Read and check a hub text_config (``source`` and ``prefix`` name it in errors)."""
        fields = Fields(raw, source, prefix)
        model_type = fields.str("model_type", "llama")
        if model_type not in _TEXT_DEFAULTS:
            raise ModelError(f"{source}: unsupported language model type '{model_type}' in {prefix}.model_type "
                             f"(supported: {', '.join(sorted(_TEXT_DEFAULTS))})")
        defaults = _TEXT_DEFAULTS[model_type]
        heads = fields.int("num_attention_heads", defaults["num_attention_heads"], lo=1, hi=MAX_HEADS)
        hidden = fields.int("hidden_size", defaults["hidden_size"], lo=1, hi=MAX_HIDDEN)
        kv_heads = fields.int("num_key_value_heads", defaults.get("num_key_value_heads", heads), lo=1, hi=heads)
        if heads % kv_heads:
            raise fields.error("num_key_value_heads", f"a divisor of num_attention_heads ({heads})", kv_heads)
        if fields.has("head_dim"):
            head_dim = fields.int("head_dim", lo=2, hi=MAX_HIDDEN)
        else:
            head_dim = hidden // heads
            if head_dim < 2:
                raise fields.error("num_attention_heads", f"at most hidden_size / 2 ({hidden // 2})", heads)
        if head_dim % 2:
            raise ModelError(f"{source}: {prefix}.head_dim must be even for rotary embeddings, got {head_dim}")
        theta = fields.float("rope_theta", defaults["rope_theta"], lo=0, hi=1e15, lo_open=True)
        theta, factor = _rope_settings(fields, theta)
        sliding = None
        window_from = 0
        if model_type == "qwen2":
            # Qwen2 windows only with use_sliding_window (false in every LLaVA config), and
            # then only from layer max_window_layers on (Qwen2Config defaults 4096 / 28).
            if fields.bool("use_sliding_window", False):
                sliding = fields.int("sliding_window", 4096, lo=1, hi=MAX_POSITIONS)
                window_from = fields.int("max_window_layers", 28, lo=0, hi=MAX_LAYERS)
        elif "sliding_window" in raw:  # an explicit null turns Mistral's default window off
            sliding = fields.int("sliding_window", None, lo=1, hi=MAX_POSITIONS)
        else:
            sliding = defaults["sliding_window"]
        if tie_word_embeddings is None:
            tie = fields.bool("tie_word_embeddings", False)
        elif isinstance(tie_word_embeddings, bool):
            tie = tie_word_embeddings
        else:
            raise ModelError(f"{source}: tie_word_embeddings must be true or false, got {show(tie_word_embeddings)}")
        return cls(
            vocab_size=fields.int("vocab_size", defaults["vocab_size"], lo=1, hi=MAX_VOCAB),
            hidden_size=hidden,
            intermediate_size=fields.int("intermediate_size", defaults["intermediate_size"], lo=1,
                                         hi=MAX_INTERMEDIATE),
            num_layers=fields.int("num_hidden_layers", defaults["num_hidden_layers"], lo=1, hi=MAX_LAYERS),
            num_heads=heads,
            num_kv_heads=kv_heads,
            head_dim=head_dim,
            rms_norm_eps=fields.float("rms_norm_eps", defaults["rms_norm_eps"], lo=0, hi=1, lo_open=True),
            rope_theta=theta,
            rope_linear_factor=factor,
            max_position_embeddings=fields.int("max_position_embeddings", defaults["max_position_embeddings"],
                                               lo=1, hi=MAX_POSITIONS),
            qkv_bias=fields.bool("attention_bias", defaults["attention_bias"]),
            tie_word_embeddings=tie,
            sliding_window=sliding,
            sliding_window_from_layer=window_from,
        )


def _rope_settings(fields: Fields, theta: float) -> tuple[float, float]:
    """(rope_theta, linear factor) from either config form.

    Older configs keep ``rope_theta`` and ``rope_scaling`` at the top level; newer ones
    put both in ``rope_parameters``. Stray top-level ``factor``/``type`` keys (the first
    LLaVA-NeXT-Video upload) are not a scaling setting and are ignored, as the reference
    ignores them.
    """
    params = fields.object("rope_parameters", None)
    scaling = fields.object("rope_scaling", None)
    if params is not None:
        theta = params.float("rope_theta", theta, lo=0, hi=1e15, lo_open=True)
        scaling = params
    if scaling is None or not scaling.raw:
        return theta, 1.0
    kind = scaling.str("rope_type", None) or scaling.str("type", "default")
    if kind == "default":
        return theta, 1.0
    if kind == "linear":
        return theta, scaling.float("factor", lo=0, hi=1e6, lo_open=True)
    raise ModelError(f"{scaling.source}: unsupported RoPE scaling type '{kind}' in {scaling.prefix} "
                     f"(supported: linear)")


_VISION_DEFAULTS = {
    "clip_vision_model": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                              num_attention_heads=12, image_size=224, patch_size=32,
                              layer_norm_eps=1e-5, hidden_act="quick_gelu"),
    "siglip_vision_model": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                num_attention_heads=12, image_size=224, patch_size=16,
                                layer_norm_eps=1e-6, hidden_act="gelu_pytorch_tanh"),
}

VISION_ACTIVATIONS = ("quick_gelu", "gelu_pytorch_tanh", "gelu")  # nn/vision.py implements each


@dataclass(frozen=True)
class VisionConfig:
    kind: str  # "clip_vision_model" | "siglip_vision_model"
    hidden_size: int
    intermediate_size: int
    num_layers: int  # layers in the checkpoint
    num_heads: int
    image_size: int
    patch_size: int
    layer_norm_eps: float
    hidden_act: str

    @classmethod
    def from_hf(cls, raw: dict, *, source: str = "config.json", prefix: str = "vision_config") -> "VisionConfig":
        """Read and check a hub vision_config (``source`` and ``prefix`` name it in errors)."""
        fields = Fields(raw, source, prefix)
        kind = fields.str("model_type", "clip_vision_model")
        if kind not in _VISION_DEFAULTS:
            raise ModelError(f"{source}: unsupported vision tower '{kind}' in {prefix}.model_type "
                             f"(supported: clip_vision_model, siglip_vision_model)")
        defaults = _VISION_DEFAULTS[kind]
        act = fields.str("hidden_act", defaults["hidden_act"])
        if act not in VISION_ACTIVATIONS:
            raise ModelError(f"{source}: unsupported vision activation '{act}' in {prefix}.hidden_act "
                             f"(supported: {', '.join(VISION_ACTIVATIONS)})")
        hidden = fields.int("hidden_size", defaults["hidden_size"], lo=1, hi=MAX_HIDDEN)
        heads = fields.int("num_attention_heads", defaults["num_attention_heads"], lo=1, hi=MAX_HEADS)
        image_size = fields.int("image_size", defaults["image_size"], lo=1, hi=MAX_IMAGE_SIDE)
        patch_size = fields.int("patch_size", defaults["patch_size"], lo=1, hi=image_size)
        if image_size // patch_size > MAX_GRID:
            raise ModelError(f"{source}: {prefix}.image_size / patch_size ({image_size} / {patch_size}) gives "
                             f"{image_size // patch_size} patches per side; at most {MAX_GRID} are supported")
        return cls(kind=kind, hidden_size=hidden,
                   intermediate_size=fields.int("intermediate_size", defaults["intermediate_size"], lo=1,
                                                hi=MAX_INTERMEDIATE),
                   num_layers=fields.int("num_hidden_layers", defaults["num_hidden_layers"], lo=1, hi=MAX_LAYERS),
                   num_heads=heads, image_size=image_size, patch_size=patch_size,
                   layer_norm_eps=fields.float("layer_norm_eps", defaults["layer_norm_eps"], lo=0, hi=1,
                                               lo_open=True),
                   hidden_act=act)

    def check_buildable(self, source: str = "config.json", prefix: str = "vision_config") -> None:
        """What only building the tower needs (token counts do not): the attention heads
        split the width evenly. (transformers 4.48.3's default SigLIP config, 14 heads of
        1152, counts tokens fine but builds in neither implementation.)"""
        if self.hidden_size % self.num_heads:
            raise ModelError(f"{source}: {prefix}.num_attention_heads must be a divisor of hidden_size "
                             f"({self.hidden_size}), got {self.num_heads}")

    @property
    def has_class_token(self) -> bool:
        return self.kind == "clip_vision_model"

    @property
    def grid(self) -> int:
        """Patches per side."""
        return self.image_size // self.patch_size

    def layers_needed(self, feature_layer: int) -> int:
        """Blocks to run so that hidden_states[feature_layer] is the last one computed.

        hidden_states[0] is the embedding output and [k] the output of block k, so
        index -2 of 24 blocks is block 23 and the 24th block is never needed.
        """
        index = feature_layer if feature_layer >= 0 else self.num_layers + 1 + feature_layer
        if not 0 <= index <= self.num_layers:
            raise ModelError(f"vision_feature_layer {feature_layer} is outside the {self.num_layers}-layer tower")
        return index

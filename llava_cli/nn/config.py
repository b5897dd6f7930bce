"""The language and vision configurations, read from a hub config.json: plain data, no
torch, so that families, `llava models info` and the CLI can reason about a checkpoint
without importing torch (nn/text.py and nn/vision.py build modules from them)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import ModelError

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
    def from_hf(cls, raw: dict, *, tie_word_embeddings: bool | None = None) -> "TextConfig":
        model_type = raw.get("model_type", "llama")
        if model_type not in _TEXT_DEFAULTS:
            raise ModelError(f"unsupported language model type '{model_type}' "
                             f"(supported: {', '.join(sorted(_TEXT_DEFAULTS))})")
        merged = {**_TEXT_DEFAULTS[model_type], **{k: v for k, v in raw.items() if v is not None
                                                   or k == "sliding_window"}}
        heads = int(merged["num_attention_heads"])
        hidden = int(merged["hidden_size"])
        kv_heads = merged.get("num_key_value_heads") or heads
        head_dim = merged.get("head_dim") or hidden // heads
        theta, factor = _rope_settings(raw, float(merged["rope_theta"]))
        sliding = merged.get("sliding_window")
        window_from = 0
        if model_type == "qwen2":
            # Qwen2 windows only with use_sliding_window (false in every LLaVA config), and
            # then only from layer max_window_layers on (Qwen2Config defaults 4096 / 28).
            use = raw.get("use_sliding_window", False)
            sliding = raw.get("sliding_window", 4096) if use else None
            window_from = int(raw.get("max_window_layers", 28)) if use else 0
        tie = raw.get("tie_word_embeddings", False) if tie_word_embeddings is None else tie_word_embeddings
        return cls(
            vocab_size=int(merged["vocab_size"]),
            hidden_size=hidden,
            intermediate_size=int(merged["intermediate_size"]),
            num_layers=int(merged["num_hidden_layers"]),
            num_heads=heads,
            num_kv_heads=int(kv_heads),
            head_dim=int(head_dim),
            rms_norm_eps=float(merged["rms_norm_eps"]),
            rope_theta=theta,
            rope_linear_factor=factor,
            max_position_embeddings=int(merged["max_position_embeddings"]),
            qkv_bias=bool(merged.get("attention_bias", False)),
            tie_word_embeddings=bool(tie),
            sliding_window=int(sliding) if sliding else None,
            sliding_window_from_layer=window_from,
        )


def _rope_settings(raw: dict, theta: float) -> tuple[float, float]:
    """(rope_theta, linear factor) from either config form.

    Older configs keep ``rope_theta`` and ``rope_scaling`` at the top level; newer ones
    put both in ``rope_parameters``. Stray top-level ``factor``/``type`` keys (the first
    LLaVA-NeXT-Video upload) are not a scaling setting and are ignored, as the reference
    ignores them.
    """
    params = raw.get("rope_parameters")
    scaling = raw.get("rope_scaling")
    if isinstance(params, dict):
        theta = float(params.get("rope_theta", theta))
        scaling = params
    if not scaling:
        return theta, 1.0
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "default":
        return theta, 1.0
    if kind == "linear":
        return theta, float(scaling["factor"])
    raise ModelError(f"unsupported RoPE scaling type '{kind}' (supported: linear)")


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
    def from_hf(cls, raw: dict) -> "VisionConfig":
        kind = raw.get("model_type", "clip_vision_model")
        if kind not in _VISION_DEFAULTS:
            raise ModelError(f"unsupported vision tower '{kind}' (supported: clip, siglip)")
        merged = {**_VISION_DEFAULTS[kind], **raw}
        if merged["hidden_act"] not in VISION_ACTIVATIONS:
            raise ModelError(f"unsupported vision activation '{merged['hidden_act']}'")
        return cls(kind=kind, hidden_size=int(merged["hidden_size"]),
                   intermediate_size=int(merged["intermediate_size"]),
                   num_layers=int(merged["num_hidden_layers"]), num_heads=int(merged["num_attention_heads"]),
                   image_size=int(merged["image_size"]), patch_size=int(merged["patch_size"]),
                   layer_norm_eps=float(merged["layer_norm_eps"]), hidden_act=merged["hidden_act"])

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

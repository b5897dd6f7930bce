"""Reconstructed config.json of every published checkpoint (full size), from
../shared/reference/hub_configs.md. Like the hub files they store only non-default keys,
so building them also exercises our defaults.

PUBLISHED_PARAMS are the hub's "Model size" figures (safetensors parameter counts, as the
model pages round them to three significant digits).
"""

from __future__ import annotations

CLIP_336 = {"model_type": "clip_vision_model", "hidden_size": 1024, "image_size": 336, "intermediate_size": 4096,
            "num_attention_heads": 16, "num_hidden_layers": 24, "patch_size": 14, "projection_dim": 768,
            "vocab_size": 32000}
CLIP_224 = {k: v for k, v in CLIP_336.items() if k != "image_size"}  # Video-LLaVA stores no image_size
SIGLIP_384 = {"model_type": "siglip_vision_model", "hidden_size": 1152, "image_size": 384, "intermediate_size": 4304,
              "num_attention_heads": 16, "num_hidden_layers": 26, "patch_size": 14, "vision_use_head": False}
NEXT_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
OV_PINPOINTS = [[h, w] for h in range(384, 2305, 384) for w in range(384, 2305, 384)]

VICUNA_7B = {"_name_or_path": "lmsys/vicuna-7b-v1.5", "architectures": ["LlamaForCausalLM"], "model_type": "llama",
             "max_position_embeddings": 4096, "rms_norm_eps": 1e-05, "torch_dtype": "float16", "vocab_size": 32064}
YI_34B = {"_name_or_path": "NousResearch/Nous-Hermes-2-Yi-34B", "architectures": ["LlamaForCausalLM"],
          "model_type": "llama", "eos_token_id": 7, "hidden_size": 7168, "intermediate_size": 20480,
          "max_position_embeddings": 4096, "num_attention_heads": 56, "num_hidden_layers": 60,
          "num_key_value_heads": 8, "pad_token_id": 0, "rms_norm_eps": 1e-05, "rope_theta": 5000000.0,
          "torch_dtype": "bfloat16", "use_cache": False, "vocab_size": 64064}


def _qwen2(hidden, inter, layers, heads, kv, vocab, tie, name):
    return {"_name_or_path": name, "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
            "bos_token_id": 151643, "eos_token_id": 151645, "hidden_size": hidden, "intermediate_size": inter,
            "max_position_embeddings": 32768, "max_window_layers": layers, "num_attention_heads": heads,
            "num_hidden_layers": layers, "num_key_value_heads": kv, "rope_theta": 1000000.0,
            "sliding_window": 32768, "tie_word_embeddings": tie, "use_sliding_window": False,
            "vocab_size": vocab, "torch_dtype": "bfloat16"}


def _onevision(text, tie):
    return {"architectures": ["LlavaOnevisionForConditionalGeneration"], "model_type": "llava_onevision",
            "image_token_index": 151646, "video_token_index": 151647, "image_grid_pinpoints": OV_PINPOINTS,
            "projector_hidden_act": "gelu", "tie_word_embeddings": tie, "use_image_newline_parameter": True,
            "vision_aspect_ratio": "anyres_max_9", "vision_feature_layer": -1,
            "vision_feature_select_strategy": "full", "torch_dtype": "float16", "text_config": text,
            "vision_config": SIGLIP_384}


# The Interleave repos store the SigLIP config with its activation and norm epsilon spelled out.
SIGLIP_384_INTERLEAVE = {"hidden_act": "gelu_pytorch_tanh", "hidden_size": 1152, "image_size": 384,
                         "intermediate_size": 4304, "layer_norm_eps": 1e-06, "model_type": "siglip_vision_model",
                         "num_attention_heads": 16, "num_hidden_layers": 26, "patch_size": 14,
                         "vision_use_head": False}


def _interleave(text, version):
    """LLaVA-Interleave: the LLaVA-1.5 architecture (model_type llava) with SigLIP-384 at
    layer -1 / strategy "full" and a Qwen1.5 (model_type qwen2) backbone. Verbatim hub
    config.json (every key, in the hub's order); see CONFIGS below for the revisions."""
    return {"architectures": ["LlavaForConditionalGeneration"], "ignore_index": -100, "image_token_index": 151646,
            "model_type": "llava", "projector_hidden_act": "gelu", "text_config": text, "torch_dtype": "bfloat16",
            "transformers_version": version, "vision_config": SIGLIP_384_INTERLEAVE, "vision_feature_layer": -1,
            "vision_feature_select_strategy": "full"}


CONFIGS: dict[str, dict] = {
    "llava-hf/llava-1.5-7b-hf": {
        "architectures": ["LlavaForConditionalGeneration"], "model_type": "llava", "ignore_index": -100,
        "image_token_index": 32000, "pad_token_id": 32001, "projector_hidden_act": "gelu",
        "vision_feature_layer": -2, "vision_feature_select_strategy": "default", "vocab_size": 32064,
        "tie_word_embeddings": False, "torch_dtype": "float16", "text_config": VICUNA_7B, "vision_config": CLIP_336},
    "llava-hf/llava-v1.6-vicuna-7b-hf": {
        "architectures": ["LlavaNextForConditionalGeneration"], "model_type": "llava_next",
        "image_token_index": 32000, "image_grid_pinpoints": NEXT_PINPOINTS, "projector_hidden_act": "gelu",
        "use_image_newline_parameter": True, "vision_feature_layer": -2,
        "vision_feature_select_strategy": "default", "vocab_size": 32064, "torch_dtype": "float16",
        "text_config": {**VICUNA_7B, "pad_token_id": 0}, "vision_config": CLIP_336},
    "llava-hf/llava-v1.6-mistral-7b-hf": {
        "architectures": ["LlavaNextForConditionalGeneration"], "model_type": "llava_next",
        "image_token_index": 32000, "image_grid_pinpoints": NEXT_PINPOINTS, "projector_hidden_act": "gelu",
        "use_image_newline_parameter": True, "vision_feature_layer": -2,
        "vision_feature_select_strategy": "default", "vocab_size": 32064, "torch_dtype": "float16",
        "text_config": {"_name_or_path": "mistralai/Mistral-7B-Instruct-v0.2",
                        "architectures": ["MistralForCausalLM"], "model_type": "mistral",
                        "intermediate_size": 14336, "max_position_embeddings": 32768, "num_key_value_heads": 8,
                        "rms_norm_eps": 1e-05, "rope_theta": 1000000.0, "sliding_window": None,
                        "torch_dtype": "bfloat16", "vocab_size": 32064},
        "vision_config": CLIP_336},
    "llava-hf/llava-v1.6-34b-hf": {
        "architectures": ["LlavaNextForConditionalGeneration"], "model_type": "llava_next",
        "image_token_index": 64000, "image_grid_pinpoints": NEXT_PINPOINTS, "projector_hidden_act": "gelu",
        "use_image_newline_parameter": True, "vision_feature_layer": -2,
        "vision_feature_select_strategy": "default", "vocab_size": 64064, "torch_dtype": "float16",
        "text_config": YI_34B, "vision_config": CLIP_336},
    "llava-hf/llama3-llava-next-8b-hf": {
        "architectures": ["LlavaNextForConditionalGeneration"], "model_type": "llava_next",
        "image_token_index": 128256, "image_grid_pinpoints": NEXT_PINPOINTS, "tie_word_embeddings": False,
        "use_image_newline_parameter": True, "vision_feature_layer": -2,
        "vision_feature_select_strategy": "default", "torch_dtype": "float16",
        "text_config": {"_name_or_path": "meta-llama/Meta-Llama-3-8B-Instruct",
                        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "bos_token_id": 128000,
                        "eos_token_id": 128009, "intermediate_size": 14336, "max_position_embeddings": 8192,
                        "num_key_value_heads": 8, "rms_norm_eps": 1e-05, "rope_theta": 500000.0,
                        "torch_dtype": "bfloat16", "vocab_size": 128320},
        "vision_config": CLIP_336},
    "llava-hf/llava-next-72b-hf": {
        "architectures": ["LlavaNextForConditionalGeneration"], "model_type": "llava_next",
        "image_token_index": 151646, "image_grid_pinpoints": NEXT_PINPOINTS, "tie_word_embeddings": False,
        "use_image_newline_parameter": True, "vision_feature_layer": -2,
        "vision_feature_select_strategy": "default", "torch_dtype": "float16",
        "text_config": _qwen2(8192, 24576, 80, 64, 64, 152064, False, "Qwen/Qwen1.5-72B-Chat"),
        "vision_config": CLIP_336},
    "llava-hf/LLaVA-NeXT-Video-7B-hf": {
        "architectures": ["LlavaNextVideoForConditionalGeneration"], "model_type": "llava_next_video",
        "image_token_index": 32001, "video_token_index": 32000, "image_grid_pinpoints": NEXT_PINPOINTS,
        "use_image_newline_parameter": True, "spatial_pool_mode": "average", "spatial_pool_out_channels": 1024,
        "spatial_pool_stride": 2, "vision_feature_layer": -2, "vision_feature_select_strategy": "default",
        "tie_word_embeddings": False, "torch_dtype": "bfloat16",
        "text_config": {**VICUNA_7B, "pad_token_id": 0, "rope_scaling": {"factor": 2.5, "type": "linear"}},
        "vision_config": CLIP_336},
    "llava-hf/LLaVA-NeXT-Video-34B-hf": {
        "architectures": ["LlavaNextVideoForConditionalGeneration"], "model_type": "llava_next_video",
        "image_token_index": 64004, "video_token_index": 64003, "image_grid_pinpoints": NEXT_PINPOINTS,
        "use_image_newline_parameter": True, "spatial_pool_mode": "average", "spatial_pool_out_channels": 1024,
        "spatial_pool_stride": 2, "vision_feature_layer": -2, "vision_feature_select_strategy": "default",
        "torch_dtype": "bfloat16", "text_config": YI_34B, "vision_config": CLIP_336},
    "LanguageBind/Video-LLaVA-7B-hf": {
        "architectures": ["VideoLlavaForConditionalGeneration"], "model_type": "video_llava",
        "image_token_index": 32000, "video_token_index": 32001, "pad_token_id": 32002,
        "projector_hidden_act": "gelu", "vision_feature_layer": -2, "vision_feature_select_strategy": "default",
        "vocab_size": 32064, "torch_dtype": "bfloat16", "text_config": {**VICUNA_7B, "pad_token_id": 0},
        "vision_config": CLIP_224},
    "llava-hf/llava-onevision-qwen2-0.5b-ov-hf": _onevision(
        _qwen2(896, 4864, 24, 14, 2, 152000, True, "Qwen/Qwen2-0.5B-Instruct"), True),
    "llava-hf/llava-onevision-qwen2-0.5b-si-hf": _onevision(
        _qwen2(896, 4864, 24, 14, 2, 152000, True, "Qwen/Qwen2-0.5B-Instruct"), True),
    "llava-hf/llava-onevision-qwen2-7b-ov-hf": _onevision(
        _qwen2(3584, 18944, 28, 28, 4, 152128, False, "Qwen/Qwen2-7B-Instruct"), False),
    "llava-hf/llava-onevision-qwen2-7b-si-hf": _onevision(
        _qwen2(3584, 18944, 28, 28, 4, 152128, False, "Qwen/Qwen2-7B-Instruct"), False),
    # The two Interleave configs are the hub files themselves: json.dumps(indent=2, sort_keys=True) + "\n"
    # of each is exactly the size the hub shows (1,251 and 1,100 bytes).
    # 0.5b: https://huggingface.co/llava-hf/llava-interleave-qwen-0.5b-hf/blame/187fe5ebba14c29a67f99fe56f3351b058af3e10/config.json
    # (last changed in 4cf2844 "Upload LlavaForConditionalGeneration"). Qwen1.5-0.5B-Chat's head is tied, and
    # so is this one: the single model.safetensors holds no language_model.lm_head.weight.
    "llava-hf/llava-interleave-qwen-0.5b-hf": _interleave(
        {"_name_or_path": "Qwen/Qwen1.5-0.5B-Chat", "architectures": ["Qwen2ForCausalLM"], "bos_token_id": 151643,
         "eos_token_id": 151645, "hidden_size": 1024, "intermediate_size": 2816, "max_position_embeddings": 32768,
         "max_window_layers": 21, "model_type": "qwen2", "num_attention_heads": 16, "num_hidden_layers": 24,
         "num_key_value_heads": 16, "rope_theta": 1000000.0, "sliding_window": 32768, "tie_word_embeddings": True,
         "torch_dtype": "bfloat16", "use_sliding_window": False, "vocab_size": 152000}, "4.43.0.dev0"),
    # 7b: https://huggingface.co/llava-hf/llava-interleave-qwen-7b-hf/blame/0a3fa472cfe9e6b27ee7c7567ab08c1344b6162a/config.json
    # (0a3fa47 changed only sliding_window 32768 → null and transformers_version from e55f950). The widths,
    # depth and heads are Qwen2Config's defaults (4096, 32 layers, 32 heads / 32 KV heads), so they are not
    # stored; neither is tie_word_embeddings (default false: Qwen1.5-7B-Chat has its own head).
    "llava-hf/llava-interleave-qwen-7b-hf": _interleave(
        {"_name_or_path": "Qwen/Qwen1.5-7B-Chat", "architectures": ["Qwen2ForCausalLM"], "bos_token_id": 151643,
         "eos_token_id": 151645, "intermediate_size": 11008, "max_position_embeddings": 32768,
         "max_window_layers": 28, "model_type": "qwen2", "rope_theta": 1000000.0, "sliding_window": None,
         "torch_dtype": "bfloat16", "use_sliding_window": False, "vocab_size": 152000}, "4.44.0.dev0"),
}

PUBLISHED_PARAMS: dict[str, float] = {
    "llava-hf/llava-1.5-7b-hf": 7.06e9,
    "llava-hf/llava-v1.6-vicuna-7b-hf": 7.06e9,
    "llava-hf/llava-v1.6-mistral-7b-hf": 7.57e9,
    "llava-hf/llava-v1.6-34b-hf": 34.8e9,
    "llava-hf/llama3-llava-next-8b-hf": 8.36e9,
    "llava-hf/llava-next-72b-hf": 72.7e9,
    "llava-hf/LLaVA-NeXT-Video-7B-hf": 7.06e9,
    "llava-hf/LLaVA-NeXT-Video-34B-hf": 34.8e9,
    "LanguageBind/Video-LLaVA-7B-hf": 7.37e9,
    "llava-hf/llava-onevision-qwen2-0.5b-ov-hf": 893.7e6,
    "llava-hf/llava-onevision-qwen2-0.5b-si-hf": 893.7e6,
    "llava-hf/llava-onevision-qwen2-7b-ov-hf": 8.03e9,
    "llava-hf/llava-onevision-qwen2-7b-si-hf": 8.03e9,
    # 0.5b: the hub lists the repo at "0.9B" (e.g. https://huggingface.co/mdoeir/activity/all) and its one
    # bf16 model.safetensors at 1.73 GB (https://huggingface.co/llava-hf/llava-interleave-qwen-0.5b-hf/tree/
    # eaf0a712d37f7b66d4b0ef1a1d938e044201c277, also tree/4cf2844), i.e. 1.73e9 / 2 bytes = 865M ± 0.3%
    # (the size's own rounding). The model page's three-digit "Model size" was not found in any stored copy.
    "llava-hf/llava-interleave-qwen-0.5b-hf": 865e6,
    # 7b: "Model size 8.14B params" on the page of its bf16 MLX conversion of these weights
    # (https://huggingface.co/mlx-community/llava-interleave-qwen-7b-bf16, "converted ... from
    # llava-hf/llava-interleave-qwen-7b-hf"), and the four bf16 shards listed at 4.98 + 4.92 + 4.95 + 1.43 =
    # 16.28 GB (https://huggingface.co/llava-hf/llava-interleave-qwen-7b-hf/tree/main) = 8.14B.
    "llava-hf/llava-interleave-qwen-7b-hf": 8.14e9,
}

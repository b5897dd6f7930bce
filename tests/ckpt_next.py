"""Tiny random LLaVA-NeXT (v1.6) checkpoints for every language backbone the llava-hf uploads use.

Each spec mirrors one hub checkpoint's text side (architecture flags, GQA ratio, RoPE theta,
sliding-window setting, BOS/EOS tokens and tokenizer kind) at tiny widths, with the real
336-px CLIP geometry and anyres pinpoints, and that checkpoint's hub chat template. Written by
transformers 4.48.3's `save_pretrained` (the test oracle; imported inside functions only).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from checkpoints import hub_template
from parity import load_pretrained
from tokenizer_factory import (SHARED, SHARED_TOKENIZERS, _training_sentences, add_tokens,
                               real_llama2_tokenizer, train_llama_tokenizer)

# Llama-3's pre-tokenizer split (tokenizer.json of Meta-Llama-3-8B-Instruct).
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
# Qwen2's (Qwen2TokenizerFast / Qwen2Converter).
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")


@dataclass
class NextSpec:
    """Knobs of one tiny LLaVA-NeXT checkpoint."""

    template_key: str  # the hub checkpoint whose chat template (and text side) this mirrors
    builtin: str  # our BUILTIN_TEMPLATES key for that checkpoint (template fallback without shared)
    tokenizer: str  # "trained" | "llama2" | "yi" | "llama3" | "qwen2" | "qwen2-trained"
    model_type: str = "llama"
    hidden: int = 64
    layers: int = 2
    heads: int = 4
    kv_heads: int = 4
    rope_theta: float = 10000.0
    vision_hidden: int = 32
    vision_layers: int = 3
    image_size: int = 336
    init_std: float = 0.1  # wider than the default 0.02 so greedy choices are well separated
    seed: int = 0  # chosen per spec so that greedy continuations are not one repeated token
    text_config: dict = field(default_factory=dict)  # extra text_config keys
    config_patch: dict = field(default_factory=dict)  # text_config keys written into config.json afterwards
    eos: str = "</s>"  # the stop token generation_config must carry


SPECS: dict[str, NextSpec] = {
    # llava-v1.6-vicuna-7b: Llama-2 (MHA), θ 1e4, pad 0.
    "vicuna": NextSpec("llava-hf/llava-v1.6-vicuna-7b-hf", "vicuna", "trained", seed=4,
                       text_config={"pad_token_id": 0}),
    "vicuna-llama2": NextSpec("llava-hf/llava-v1.6-vicuna-7b-hf", "vicuna", "llama2", seed=2,
                              text_config={"pad_token_id": 0}),
    # llava-v1.6-mistral-7b: GQA 4:1, θ 1e6, sliding_window null.
    "mistral": NextSpec("llava-hf/llava-v1.6-mistral-7b-hf", "mistral", "trained", model_type="mistral",
                        hidden=128, heads=8, kv_heads=2, rope_theta=1e6, seed=4,
                        text_config={"sliding_window": None}),
    # Same, with a window far smaller than the image prompt (and than the text-only one).
    "mistral-swa": NextSpec("llava-hf/llava-v1.6-mistral-7b-hf", "mistral", "trained", model_type="mistral",
                            hidden=128, heads=8, kv_heads=2, rope_theta=1e6, seed=1,
                            text_config={"sliding_window": 16}),
    # llava-v1.6-34b: Yi-34B = Llama architecture, GQA 7:1, θ 5e6, BOS <|startoftext|> 1, EOS <|im_end|> 7.
    "yi": NextSpec("llava-hf/llava-v1.6-34b-hf", "chatml_yi", "yi", hidden=224, heads=14, kv_heads=2,
                   rope_theta=5e6, seed=2, text_config={"pad_token_id": 0}, eos="<|im_end|>"),
    # llama3-llava-next-8b: GQA 4:1, θ 5e5, BOS <|begin_of_text|>, EOS <|eot_id|>.
    "llama3": NextSpec("llava-hf/llama3-llava-next-8b-hf", "llama3", "llama3", hidden=128, heads=8, kv_heads=2,
                       rope_theta=5e5, eos="<|eot_id|>"),
    # llava-next-72b: Qwen1.5 = qwen2 type, q/k/v bias, no GQA, no BOS, EOS <|im_end|>, rms eps default
    # (absent), and the hub's stale sliding_window with use_sliding_window false.
    "qwen": NextSpec("llava-hf/llava-next-72b-hf", "qwen", "qwen2", model_type="qwen2", rope_theta=1e6, seed=2,
                     config_patch={"sliding_window": 16, "use_sliding_window": False, "max_window_layers": 0},
                     eos="<|im_end|>"),
    "qwen-trained": NextSpec("llava-hf/llava-next-72b-hf", "qwen", "qwen2-trained", model_type="qwen2",
                             rope_theta=1e6,
                             config_patch={"sliding_window": 16, "use_sliding_window": False,
                                           "max_window_layers": 0},
                             eos="<|im_end|>"),
}


def template_for(spec: NextSpec) -> str:
    """The hub checkpoint's chat template from ../shared, else our verbatim built-in copy."""
    if (SHARED / "reference" / "chat_templates.json").is_file():
        return hub_template(spec.template_key)
    from llava_cli.prompt import BUILTIN_TEMPLATES

    return BUILTIN_TEMPLATES[spec.builtin]


# -- tokenizers -------------------------------------------------------------------------------------

def train_yi_tokenizer(workdir: Path, vocab_size: int = 400):
    """A SentencePiece BPE with Yi's special-token layout: <unk> 0, <|startoftext|> 1,
    <|endoftext|> 2, <|im_start|> 6, <|im_end|> 7; BOS <|startoftext|>, EOS <|im_end|>
    (as in Nous-Hermes-2-Yi-34B's tokenizer_config), BOS added."""
    import sentencepiece as spm
    from transformers import LlamaTokenizerFast

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_training_sentences()), model_prefix=str(workdir / "tokenizer"),
        model_type="bpe", vocab_size=vocab_size, byte_fallback=True, split_digits=True,
        allow_whitespace_only_pieces=True, remove_extra_whitespaces=False, normalization_rule_name="identity",
        add_dummy_prefix=True, character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        bos_piece="<|startoftext|>", eos_piece="<|endoftext|>",
        control_symbols=["<|Human|>", "<|Assistant|>", "<|System|>", "<|im_start|>", "<|im_end|>"],
        num_threads=1, minloglevel=2,
    )
    tok = LlamaTokenizerFast.from_pretrained(str(workdir), legacy=True, bos_token="<|startoftext|>",
                                             eos_token="<|im_end|>", pad_token="<unk>")
    assert tok.convert_tokens_to_ids(["<|startoftext|>", "<|im_start|>", "<|im_end|>"]) == [1, 6, 7]
    return tok


def _train_byte_level(split: str, vocab_size: int, *, ignore_merges: bool, nfc: bool):
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    raw = Tokenizer(models.BPE(ignore_merges=ignore_merges, byte_fallback=False, fuse_unk=False))
    if nfc:
        raw.normalizer = normalizers.NFC()
    raw.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(split), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    raw.train_from_iterator(_training_sentences() * 4, trainer)
    return raw


def train_llama3_tokenizer(vocab_size: int = 600):
    """Byte-level BPE shaped like Llama-3's tokenizer.json: Llama-3 split regex, ignore_merges,
    the special tokens after the regular vocabulary, and a post-processor that prepends
    <|begin_of_text|> (tokenizer_class PreTrainedTokenizerFast: BOS comes from tokenizer.json)."""
    from tokenizers import AddedToken, processors
    from transformers import PreTrainedTokenizerFast

    raw = _train_byte_level(LLAMA3_SPLIT, vocab_size, ignore_merges=True, nfc=False)
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                "<|reserved_special_token_1|>", "<|start_header_id|>", "<|end_header_id|>",
                "<|reserved_special_token_2|>", "<|reserved_special_token_3|>", "<|reserved_special_token_4|>",
                "<|eot_id|>"]
    raw.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    bos_id = raw.token_to_id("<|begin_of_text|>")
    raw.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                      pair="<|begin_of_text|> $A <|begin_of_text|>:1 $B:1",
                                      special_tokens=[("<|begin_of_text|>", bos_id)]),
    ])
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
                                  clean_up_tokenization_spaces=True,
                                  model_input_names=["input_ids", "attention_mask"])
    assert tok("hi").input_ids[0] == bos_id
    return tok


def train_qwen2_tokenizer(vocab_size: int = 600):
    """Byte-level BPE shaped like Qwen2's (NFC, Qwen2 split regex), <|endoftext|>, <|im_start|>,
    <|im_end|> after the regular vocabulary; Qwen2TokenizerFast: no BOS, EOS <|im_end|>."""
    from tokenizers import AddedToken, processors
    from transformers import Qwen2TokenizerFast

    raw = _train_byte_level(QWEN2_SPLIT, vocab_size, ignore_merges=False, nfc=True)
    raw.post_processor = processors.ByteLevel(trim_offsets=False)
    raw.add_special_tokens([AddedToken(s, special=True, normalized=False)
                            for s in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")])
    return Qwen2TokenizerFast(tokenizer_object=raw, bos_token=None, eos_token="<|im_end|>",
                              pad_token="<|endoftext|>", unk_token=None,
                              additional_special_tokens=["<|im_start|>", "<|im_end|>"])


def real_qwen2_tokenizer():
    """The Qwen2 tokenizer from the shared reference folder (skips when absent)."""
    import pytest
    from transformers import AutoTokenizer

    source = SHARED_TOKENIZERS / "qwen2"
    if not (source / "vocab.json").is_file():
        pytest.skip(f"shared Qwen2 tokenizer not found at {source}")
    return AutoTokenizer.from_pretrained(source)


def build_tokenizer(spec: NextSpec, workdir: Path):
    """The tokenizer with LLaVA-NeXT's extra tokens appended, as the conversion scripts did."""
    kind = spec.tokenizer
    if kind == "trained":
        tok = train_llama_tokenizer(workdir / "spm")
    elif kind == "llama2":
        tok = real_llama2_tokenizer()
    elif kind == "yi":
        tok = train_yi_tokenizer(workdir / "spm-yi")
    elif kind == "llama3":
        tok = train_llama3_tokenizer()
    elif kind == "qwen2":
        tok = real_qwen2_tokenizer()
    elif kind == "qwen2-trained":
        tok = train_qwen2_tokenizer()
    else:
        raise ValueError(kind)
    if spec.model_type == "mistral" or kind == "llama3":
        add_tokens(tok, ["<image>", "<pad>"])  # v1.6-mistral / llama3-llava-next: <image> then <pad>
        tok.pad_token = "<pad>"
    else:
        add_tokens(tok, ["<image>"])
    if kind == "qwen2":
        assert tok.convert_tokens_to_ids("<image>") == 151646  # llava-next-72b's image_token_index
    return tok


# -- checkpoint -------------------------------------------------------------------------------------

def make_next(folder: Path, spec: NextSpec) -> Path:
    """Write a tiny random LLaVA-NeXT checkpoint for ``spec`` to ``folder`` and return it."""
    import torch
    from transformers import (LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextImageProcessor,
                              LlavaNextProcessor)

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(spec, folder.parent / f"{folder.name}-work")
    image_id = tok.convert_tokens_to_ids("<image>")
    eos_id = tok.convert_tokens_to_ids(spec.eos)
    assert tok.eos_token_id == eos_id, (tok.eos_token, spec.eos)
    text_config = {
        "model_type": spec.model_type, "hidden_size": spec.hidden, "intermediate_size": spec.hidden * 2,
        "num_hidden_layers": spec.layers, "num_attention_heads": spec.heads,
        "num_key_value_heads": spec.kv_heads, "vocab_size": len(tok), "max_position_embeddings": 8192,
        "rope_theta": spec.rope_theta, "initializer_range": spec.init_std,
        "bos_token_id": tok.bos_token_id if tok.bos_token_id is not None else tok.convert_tokens_to_ids(
            "<|endoftext|>"),
        "eos_token_id": eos_id,
        **spec.text_config,
    }
    if spec.model_type != "qwen2":
        text_config["rms_norm_eps"] = 1e-5  # stored by every llava-hf text_config but the 72b's
    vision_config = {
        "model_type": "clip_vision_model", "hidden_size": spec.vision_hidden,
        "intermediate_size": spec.vision_hidden * 2, "num_hidden_layers": spec.vision_layers,
        "num_attention_heads": 4, "image_size": spec.image_size, "patch_size": 14, "projection_dim": 32,
    }
    size = spec.image_size
    pinpoints = [[size, 2 * size], [2 * size, size], [2 * size, 2 * size], [3 * size, size], [size, 3 * size]]
    config = LlavaNextConfig(
        text_config=text_config, vision_config=vision_config, image_token_index=image_id,
        image_grid_pinpoints=pinpoints, vision_feature_layer=-2, vision_feature_select_strategy="default",
        use_image_newline_parameter=True, tie_word_embeddings=False, initializer_range=spec.init_std,
    )
    torch.manual_seed(spec.seed)
    model = LlavaNextForConditionalGeneration(config).eval()
    with torch.no_grad():  # biases and norms start at constants; randomise them too
        for name, param in model.named_parameters():
            if name.endswith("bias") or "norm" in name or "layrnorm" in name:
                param.add_(torch.randn_like(param) * spec.init_std)
    model.save_pretrained(folder, safe_serialization=True)
    if spec.config_patch:
        path = folder / "config.json"
        saved = json.loads(path.read_text())
        saved["text_config"].update(spec.config_patch)
        path.write_text(json.dumps(saved, indent=2))

    common = dict(size={"shortest_edge": size}, crop_size={"height": size, "width": size}, resample=3,
                  do_center_crop=True, do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
                  do_convert_rgb=True)
    processor = LlavaNextProcessor(
        image_processor=LlavaNextImageProcessor(image_grid_pinpoints=pinpoints, do_pad=True, **common),
        tokenizer=tok, chat_template=template_for(spec), patch_size=14,
        vision_feature_select_strategy="default", num_additional_image_tokens=1,
    )
    processor.save_pretrained(folder)
    return folder


def load_reference(folder: Path, attn: str = "sdpa"):
    """The reference model and processor, loaded from the folder as a user would."""
    return load_pretrained(folder, "LlavaNextForConditionalGeneration", "LlavaNextProcessor",
                           attn_implementation=attn)

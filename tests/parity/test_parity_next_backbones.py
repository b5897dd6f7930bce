"""Parity of our LLaVA-NeXT pipeline with transformers 4.48.3 on every language backbone the
llava-hf v1.6 uploads use: Vicuna/Llama-2, Mistral (with and without a sliding window), Yi-34B,
Llama-3 and Qwen1.5 (tiny random checkpoints from ckpt_next.py, each with its hub chat template).

Per case: prompt ids identical, pixel values ≤ 1e-5, last-token logits ≤ 1e-4 (float32), and a
20-token greedy continuation identical, with the stop id taken from the checkpoint's
generation_config/config EOS as our Engine does.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from support.checkpoints.next import SPECS, load_reference, make_next
from support.media import image_file
from support.parity import LOGITS_TOL, QUESTION, Pair, check_parity, image

from llava_cli.engine import Engine
from llava_cli.nn.attention import attend
from llava_cli.prompt import BUILTIN_TEMPLATES

SYSTEM = "You are a helpful assistant."


# conftest's media_dir fixture writes these into one folder for this module.
MEDIA_FILES = {
    "wide.png": image_file(size=(640, 480)),  # (width, height): 2×2 grid, unpadded rows → 2340 tokens
    "tall.png": image_file(size=(200, 700)),  # 1008×336 best fit, 3×1 grid, unpadded columns
}


class BackbonePair(Pair):
    """A Pair that knows its spec. Anyres images are padded to the batch's most views; Qwen2
    prompts open with <|im_start|> and have no BOS, the others exactly one; the continuation
    must not be one repeated token (the seeds are chosen for it)."""

    def __init__(self, name: str, folder: Path) -> None:
        self.name = name
        self.spec = SPECS[name]
        opening = "<|im_start|>" if self.spec.model_type == "qwen2" else None
        super().__init__(folder, load_reference, padded_images=True, opening=opening, min_distinct=3)

    def inputs(self, media_dir: Path, image_name: str | None, system: str | None = None):
        return self.prepare(media(media_dir, image_name), system)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """Checkpoints are built on first use and kept for the module (a few MB each; the one with
    the real 151k-token Qwen2 vocabulary about 80 MB)."""
    built: dict[str, BackbonePair] = {}

    def get(name: str) -> BackbonePair:
        if name not in built:
            folder = make_next(tmp_path_factory.mktemp("ckpt") / f"tiny-next-{name}", SPECS[name])
            built[name] = BackbonePair(name, folder)
        return built[name]

    yield get
    built.clear()


def media(media_dir: Path, image_name: str | None):
    return [image(media_dir / image_name)] if image_name else []


def check_case(pair: BackbonePair, media_dir: Path, image_name: str | None, system: str | None = None) -> None:
    pair.check(media(media_dir, image_name), system)


NAMES = list(SPECS)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("image_name", ["wide.png", None], ids=["image-anyres", "text-only"])
def test_parity(pairs, media_dir, name, image_name):
    check_case(pairs(name), media_dir, image_name)


def test_parity_tall_image_with_sliding_window(pairs, media_dir):
    check_case(pairs("mistral-swa"), media_dir, "tall.png")


def test_parity_mistral_system_prompt(pairs, media_dir):
    check_case(pairs("mistral"), media_dir, "wide.png", system=SYSTEM)


def test_parity_yi_system_prompt(pairs, media_dir):
    check_case(pairs("yi"), media_dir, None, system=SYSTEM)


# -- the checkpoints really are what they claim -------------------------------------------------------

EXPECTED = {
    # name: (model_type, heads, kv_heads, rope_theta, qkv_bias, sliding_window, BOS, EOS)
    "vicuna": ("llama", 4, 4, 1e4, False, None, "<s>", "</s>"),
    "vicuna-llama2": ("llama", 4, 4, 1e4, False, None, "<s>", "</s>"),
    "mistral": ("mistral", 8, 2, 1e6, False, None, "<s>", "</s>"),
    "mistral-swa": ("mistral", 8, 2, 1e6, False, 16, "<s>", "</s>"),
    "yi": ("llama", 14, 2, 5e6, False, None, "<|startoftext|>", "<|im_end|>"),
    "llama3": ("llama", 8, 2, 5e5, False, None, "<|begin_of_text|>", "<|eot_id|>"),
    "qwen": ("qwen2", 4, 4, 1e6, True, None, None, "<|im_end|>"),
    "qwen-trained": ("qwen2", 4, 4, 1e6, True, None, None, "<|im_end|>"),
}


@pytest.mark.parametrize("name", NAMES)
def test_checkpoint_is_what_we_think(pairs, name):
    pair = pairs(name)
    model_type, heads, kv_heads, theta, bias, window, bos, eos = EXPECTED[name]
    raw = json.loads((pair.folder / "config.json").read_text())["text_config"]
    assert raw["model_type"] == model_type
    cfg = pair.engine.family.text_config
    assert (cfg.num_heads, cfg.num_kv_heads, cfg.rope_theta, cfg.qkv_bias, cfg.sliding_window) == (
        heads, kv_heads, theta, bias, window)
    tok = pair.engine.tokenizer
    assert tok.bos_token == bos
    assert pair.engine.stop_ids == {tok.token_to_id(eos)}
    generation = json.loads((pair.folder / "generation_config.json").read_text())
    assert generation["eos_token_id"] == tok.token_to_id(eos)
    if name == "yi":
        assert (tok.bos_token_id, tok.token_to_id("<|im_end|>")) == (1, 7)
    if model_type == "mistral":
        assert "sliding_window" in raw and raw["sliding_window"] == window  # null is stored explicitly
    if model_type == "qwen2":
        # The hub's stale window is in the file but use_sliding_window is false: full attention.
        assert (raw["sliding_window"], raw["use_sliding_window"]) == (16, False)
        assert "rms_norm_eps" not in raw and cfg.rms_norm_eps == 1e-6
        assert all(block.attn.window is None for block in pair.engine.model.text.layers)


@pytest.mark.parametrize("name", NAMES)
def test_builtin_template_when_the_checkpoint_ships_none(pairs, media_dir, name, tmp_path):
    """Without chat_template.json the engine picks the built-in that prompts like the hub template."""
    pair = pairs(name)
    folder = tmp_path / "no-template"
    shutil.copytree(pair.folder, folder)
    (folder / "chat_template.json").unlink()
    engine = Engine.load(folder, device="cpu", dtype="float32")
    assert engine.template == BUILTIN_TEMPLATES[pair.spec.builtin]
    for image_name, system in (("wide.png", None), (None, SYSTEM)):
        prepared, _ = pair.inputs(media_dir, image_name, system)
        again = engine.prepare(prepared.media, QUESTION, system=system)
        assert (again.text, again.input_ids) == (prepared.text, prepared.input_ids)


# -- sliding window ---------------------------------------------------------------------------------

def test_window_matters(pairs, media_dir):
    """Dropping the window must change the logits (image prompt ≫ 16 tokens), else parity proves little."""
    pair = pairs("mistral-swa")
    prepared, _ = pair.inputs(media_dir, "wide.png")
    layers = pair.engine.model.text.layers
    assert all(block.attn.window == 16 for block in layers)
    with_window = pair.engine.logits(prepared)
    try:
        for block in layers:
            block.attn.window = 17  # one key too many: the flash-attention reading of the window
        off_by_one = pair.engine.logits(prepared)
        for block in layers:
            block.attn.window = None
        without = pair.engine.logits(prepared)
    finally:
        for block in layers:
            block.attn.window = 16
    assert (with_window - without).abs().max().item() > 1e-3
    assert (with_window - off_by_one).abs().max().item() > LOGITS_TOL


def test_eager_backend_with_sliding_window(pairs, media_dir):
    """The eager backend applies the same window in prefill and in cached decoding."""
    pair = pairs("mistral-swa")
    engine = Engine.load(pair.folder, device="cpu", dtype="float32", attn="eager")
    ref_model, _ = load_reference(pair.folder, attn="eager")
    assert ref_model.config.text_config._attn_implementation == "eager"
    for image_name in ("wide.png", None):
        prepared, ref = pair.inputs(media_dir, image_name)
        prepared = engine.prepare(prepared.media, QUESTION)
        check_parity(engine, ref_model, prepared, ref, **pair.checks)


def _reference_mask(window: int | None, start: int, q_len: int, kv_len: int) -> torch.Tensor:
    """4.48.3 Mistral's own mask construction (eager/sdpa; DynamicCache), additive float."""
    from transformers import MistralConfig
    from transformers.models.mistral.modeling_mistral import MistralModel

    return MistralModel._prepare_4d_causal_attention_mask_with_cache_position(
        torch.ones(1, kv_len, dtype=torch.long), sequence_length=q_len, target_length=kv_len,
        dtype=torch.float32, device=torch.device("cpu"), cache_position=torch.arange(start, start + q_len),
        batch_size=1, config=MistralConfig(sliding_window=window), past_key_values=None)


def test_reference_window_excludes_key_i_minus_window():
    """What 4.48.3 does: query i sees keys i-window+1 … i (window keys), never i-window."""
    mask = _reference_mask(8, 0, 20, 20)[0, 0]
    blocked = torch.finfo(torch.float32).min
    for i in range(8, 20):
        assert mask[i, i - 8] == blocked and mask[i, i - 7] == 0 and mask[i, i] == 0
        assert int((mask[i] == 0).sum()) == 8


@pytest.mark.parametrize("backend", ["sdpa", "eager"])
@pytest.mark.parametrize("window", [None, 1, 7, 16, 39, 40, 41, 64])
@pytest.mark.parametrize("start, q_len", [(0, 40), (39, 1), (25, 15), (30, 1), (0, 1)])
def test_attend_matches_reference_mask(backend, window, start, q_len):
    torch.manual_seed(0)
    kv_len = start + q_len
    q = torch.randn(1, 8, q_len, 16)
    k, v = torch.randn(1, 2, kv_len, 16), torch.randn(1, 2, kv_len, 16)
    ours = attend(q, k, v, start=start, backend=backend, window=window)
    scores = q @ k.repeat_interleave(4, dim=1).transpose(-1, -2) / math.sqrt(16)
    weights = torch.softmax(scores + _reference_mask(window, start, q_len, kv_len), dim=-1)
    expected = weights @ v.repeat_interleave(4, dim=1)
    assert (ours - expected).abs().max().item() <= 1e-5

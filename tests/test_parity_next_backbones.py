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

from ckpt_next import SPECS, load_reference, make_next
from media_factory import make_image

from llava_cli.engine import Engine
from llava_cli.generate import Sampling
from llava_cli.media import load_media
from llava_cli.nn.attention import attend
from llava_cli.prompt import BUILTIN_TEMPLATES

LOGITS_TOL = 1e-4
PIXEL_TOL = 1e-5
QUESTION = "Why is this funny?"
SYSTEM = "You are a helpful assistant."


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("media")
    make_image(folder / "wide.png", size=(640, 480))  # (width, height): 2×2 grid, unpadded rows → 2340 tokens
    make_image(folder / "tall.png", size=(200, 700))  # 1008×336 best fit, 3×1 grid, unpadded columns
    return folder


class Pair:
    """Our engine and the reference, loaded from the same folder."""

    def __init__(self, name: str, folder: Path) -> None:
        self.name = name
        self.spec = SPECS[name]
        self.folder = folder
        self.engine = Engine.load(folder, device="cpu", dtype="float32")
        self.ref_model, self.processor = load_reference(folder)

    def inputs(self, media_dir: Path, image: str | None, system: str | None = None):
        from PIL import Image

        ours_media = [load_media(media_dir / image)] if image else []
        prepared = self.engine.prepare(ours_media, QUESTION, system=system)
        content = ([{"type": "image"}] if image else []) + [{"type": "text", "text": QUESTION}]
        conversation = [{"role": "user", "content": content}]
        if system:
            conversation.insert(0, {"role": "system", "content": [{"type": "text", "text": system}]})
        prompt = self.processor.apply_chat_template(conversation, add_generation_prompt=True)
        images = [Image.open(media_dir / image).convert("RGB")] if image else None
        ref = self.processor(text=prompt, images=images, return_tensors="pt")
        return prepared, ref


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """Checkpoints are built on first use and kept for the module (a few MB each; the one with
    the real 151k-token Qwen2 vocabulary about 80 MB)."""
    built: dict[str, Pair] = {}

    def get(name: str) -> Pair:
        if name not in built:
            folder = make_next(tmp_path_factory.mktemp("ckpt") / f"tiny-next-{name}", SPECS[name])
            built[name] = Pair(name, folder)
        return built[name]

    yield get
    built.clear()


def _stop_ids(pair: Pair) -> frozenset[int]:
    """The EOS the reference's generate stops on; ours must be the same set."""
    eos = pair.ref_model.generation_config.eos_token_id
    eos = frozenset([eos] if isinstance(eos, int) else eos)
    assert eos == pair.engine.stop_ids
    return eos


def check_case(pair: Pair, media_dir: Path, image: str | None, system: str | None = None) -> None:
    prepared, ref = pair.inputs(media_dir, image, system)
    ids = ref["input_ids"][0].tolist()
    assert prepared.input_ids == ids

    tok = pair.engine.tokenizer
    if pair.spec.model_type == "qwen2":
        assert tok.bos_token_id is None and ids[0] == tok.token_to_id("<|im_start|>")  # no BOS
    else:
        assert ids[0] == tok.bos_token_id and ids[1] != tok.bos_token_id  # exactly one BOS

    if image:
        (item,) = prepared.items
        theirs = ref["pixel_values"][0]
        assert item.pixels.shape == theirs[: item.pixels.shape[0]].shape
        assert (item.pixels - theirs[: item.pixels.shape[0]]).abs().max().item() <= PIXEL_TOL
        assert ids.count(pair.engine.family.token_ids()["image"]) == item.num_tokens

    compare_outputs(pair.engine, pair.ref_model, prepared, ref, _stop_ids(pair))


def compare_outputs(engine: Engine, ref_model, prepared, ref, stop: frozenset[int]) -> None:
    """Last-token logits, then 20 greedy tokens (the reference's cut at its first stop id)."""
    with torch.no_grad():
        ref_logits = ref_model(**ref).logits[0, -1]
    ours_logits = engine.logits(prepared)
    assert (ours_logits - ref_logits).abs().max().item() <= LOGITS_TOL

    with torch.no_grad():
        ref_out = ref_model.generate(**ref, max_new_tokens=20, do_sample=False)
    ref_tokens = ref_out[0, ref["input_ids"].shape[1]:].tolist()
    for i, token in enumerate(ref_tokens):
        if token in stop:
            ref_tokens = ref_tokens[:i]
            break
    ours_tokens = list(engine.generate(prepared, Sampling(max_new_tokens=20)))
    assert len(ref_tokens) >= 5, "the reference stopped at once: the check would be vacuous"
    assert len(set(ref_tokens)) >= 3, "one repeated token: the decode check would be weak"
    assert ours_tokens == ref_tokens


NAMES = list(SPECS)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("image", ["wide.png", None], ids=["image-anyres", "text-only"])
def test_parity(pairs, media_dir, name, image):
    check_case(pairs(name), media_dir, image)


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
    for image, system in (("wide.png", None), (None, SYSTEM)):
        prepared, _ = pair.inputs(media_dir, image, system)
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
    for image in ("wide.png", None):
        prepared, ref = pair.inputs(media_dir, image)
        prepared = engine.prepare(prepared.media, QUESTION)
        compare_outputs(engine, ref_model, prepared, ref, _stop_ids(pair))


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

"""The speed and memory paths (issue 7) behave: a compiled decode step gives the tokens the
plain one gives; the decode loop builds nothing per token; prefill in chunks gives the
whole-prompt logits while no layer sees more than a chunk; media is encoded once per
process and settings that change the frames miss that cache; attention backends resolve
with clear errors; 4-bit and 8-bit weights go where the reference puts them and compute
what their dequantized weights compute.

Speed itself is measured by bench/bench_ask.py, not here. Parity of every attention backend
with the reference is in the parity tests (tests/support/parity.py checks each available backend).
"""

from __future__ import annotations

import importlib.util
import os
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from support.cli import clean_env, run
from llava_cli.engine import Engine
from llava_cli.errors import ModelError
from llava_cli.generate import Sampling
from llava_cli.media import FrameSpec, load_media
from llava_cli.nn.attention import flash_available, resolve_backend
from llava_cli.session import MediaCache

HAS_BNB = importlib.util.find_spec("bitsandbytes") is not None
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def env(tmp_path_factory):  # not conftest's per-test env: one home for this module's CLI runs
    return clean_env(tmp_path_factory.mktemp("home"))


# -- compiled decode ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def swa_model(tmp_path_factory) -> Path:
    """A tiny LLaVA-NeXT on Mistral with GQA and a 16-key sliding window: the decode step's
    masks for full and windowed layers both matter, and its greedy answers vary."""
    from support.checkpoints.next import SPECS, make_next

    return make_next(tmp_path_factory.mktemp("ckpt") / "swa", SPECS["mistral-swa"])


@pytest.mark.slow
def test_compiled_decode_gives_identical_greedy_tokens(swa_model, tmp_path):
    from support.media import make_image

    photo = make_image(tmp_path / "photo.png", size=(640, 480))
    plain = Engine.load(swa_model, device="cpu", dtype="float32")
    compiled = Engine.load(swa_model, device="cpu", dtype="float32", compile=True)
    assert compiled.model.text.compiled and not plain.model.text.compiled
    assert hasattr(compiled.model.text._decode, "_torchdynamo_orig_callable")  # really torch.compile'd
    greedy = Sampling(max_new_tokens=24)
    for media in ([load_media(photo)], []):
        prepared = plain.prepare(media, "What is in the picture?")
        expected = list(plain.answer(prepared, greedy).tokens())
        assert len(expected) == 24 and len(set(expected)) >= 3, "a continuation too uniform to compare"
        assert list(compiled.answer(compiled.prepare(media, "What is in the picture?"), greedy).tokens()) == expected
        # The captured graph is reused for the next answer on the same cache.
        assert list(compiled.answer(prepared, greedy).tokens()) == expected


# -- the decode loop builds nothing per token ------------------------------------------------------

class _OpLog(torch.utils._python_dispatch.TorchDispatchMode):
    """Every aten op called, and the factories among them: ops with no tensor input
    (zeros, empty, arange, full, …) and lift_fresh (torch.tensor from Python values)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter = Counter()
        self.factories: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        leaves = torch.utils._pytree.tree_leaves((args, kwargs))
        name = str(func)
        self.ops[name] += 1
        if "lift_fresh" in name or not any(isinstance(leaf, torch.Tensor) for leaf in leaves):
            self.factories[name] += 1
        return func(*args, **kwargs)


def _steady_ops(engine: Engine, prepared, tokens: int) -> _OpLog:
    stream = engine.answer(prepared, Sampling(max_new_tokens=64)).tokens()
    next(stream), next(stream)  # prefill and the first decode step are behind us
    log = _OpLog()
    with log:
        for _ in range(tokens):
            next(stream)
    stream.close()
    return log


def test_the_decode_loop_allocates_nothing_per_token(engine, media_files):
    prepared = engine.prepare([load_media(media_files["clip"], num_frames=4)], "Why is this funny?")
    short, long = _steady_ops(engine, prepared, 5), _steady_ops(engine, prepared, 15)
    assert not short.factories and not long.factories, long.factories
    assert long.ops["aten.index_put_.default"] > 0  # the cache is written in place
    # Each token costs the same ops: nothing grows with the answer.
    assert {op: 3 * n for op, n in short.ops.items()} == dict(long.ops)


def test_the_decode_step_reuses_its_buffers(engine, media_files):
    seen = []
    text = engine.model.text
    original = text._decode
    text._decode = lambda *buffers: (seen.append(buffers), original(*buffers))[1]
    try:
        prepared = engine.prepare([load_media(media_files["image"])], "Describe it.")
        tokens = list(engine.answer(prepared, Sampling(max_new_tokens=8)).tokens())
    finally:
        text._decode = original
    assert len(tokens) == 8 and len(seen) == 7
    # The same memory every step (uncompiled, views of it sized to the rows decoding;
    # compiled, the whole buffers themselves).
    assert all(all(b.data_ptr() == first.data_ptr() for b, first in zip(buffers, seen[0])) for buffers in seen)
    assert [int(positions[0]) for _, positions, _ in seen][-1] == len(prepared.input_ids) + 6


# -- chunked prefill ---------------------------------------------------------------------------------

def test_chunked_prefill_matches_and_bounds_the_activations(engine, media_files):
    prepared = engine.prepare([load_media(media_files["clip"], num_frames=8)], "Why is this funny?")
    length = len(prepared.input_ids)
    assert length > 1000  # several chunks of the default size too
    text = engine.model.text
    widest = []
    hook = text.layers[0].mlp.register_forward_pre_hook(lambda module, args: widest.append(args[0].shape[1]))
    results = {}
    try:
        for chunk in (0, 1024, 97, 16):
            widest.clear()
            engine.set_prefill_chunk(chunk)
            results[chunk] = (engine.logits(prepared), text.cache.k[-1, 0, :, :length].clone())
            assert max(widest) == (min(chunk, length) if chunk else length)
    finally:
        hook.remove()
        engine.set_prefill_chunk(1024)
    whole_logits, whole_keys = results[0]
    for chunk, (logits, keys) in results.items():
        assert (logits - whole_logits).abs().max().item() <= 1e-5, chunk
        assert (keys - whole_keys).abs().max().item() <= 1e-5, chunk


def test_chunked_prefill_in_the_cli(tiny_model, media_files, env):
    args = ["ask", "-m", str(tiny_model), "-n", "6", str(media_files["clip"]), "Why is this funny?"]
    whole = run([*args, "--prefill-chunk", "0"], env)
    chunked = run([*args, "--prefill-chunk", "50"], env)
    assert whole.returncode == 0 and chunked.returncode == 0, chunked.stderr
    assert chunked.stdout == whole.stdout and whole.stdout.strip()


# -- encode once ---------------------------------------------------------------------------------------

def test_media_is_encoded_once_and_new_frame_settings_miss(engine, media_files):
    cache = MediaCache(engine)
    spec = FrameSpec(frames=4)
    before = engine.stats.media_encoded
    first = cache.load(str(media_files["clip"]), spec)
    cache.encode(first)
    again = cache.load(str(media_files["clip"]), FrameSpec(frames=4))  # an equal spec, a new object
    assert again is first
    cache.encode(again)
    assert engine.stats.media_encoded - before == 1

    for changed in (replace(spec, frames=6), replace(spec, start=0.5), replace(spec, fps=2.0),
                    replace(spec, max_frames=3)):
        entry = cache.load(str(media_files["clip"]), changed)
        assert entry is not first
        cache.encode(entry)
    assert engine.stats.media_encoded - before == 5


def test_a_changed_file_misses_the_cache(engine, media_files, tmp_path):
    import shutil

    copy = tmp_path / "clip.mp4"
    shutil.copy(media_files["clip"], copy)
    cache = MediaCache(engine)
    first = cache.load(str(copy), FrameSpec(frames=4))
    stat = copy.stat()
    os.utime(copy, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # touched: maybe rewritten
    assert cache.load(str(copy), FrameSpec(frames=4)) is not first


def test_chat_encodes_once_until_the_frames_change(tiny_model, media_files, env):
    clip = str(media_files["clip"])
    script = "\n".join(["What is it?", "And then?", "/set frames 4", f"/attach {clip}", "Now?", "/bye", ""])
    result = run(["chat", "-m", str(tiny_model), "-n", "4", "-v", "--frames", "6", clip], env, stdin=script)
    assert result.returncode == 0, result.stderr
    encodes = [line for line in result.stderr.splitlines() if "encoded video" in line]
    assert len(encodes) == 2, result.stderr  # once for both questions; once more at 4 frames
    assert "(6 frames)" in encodes[0] and "(4 frames)" in encodes[1]


# -- attention backends -----------------------------------------------------------------------------

def test_auto_attention_is_sdpa_without_flash():
    assert resolve_backend("auto", CPU, torch.float32) == "sdpa"
    assert resolve_backend(None, CPU, torch.float32) == "sdpa"
    assert resolve_backend("eager", CPU, torch.float32) == "eager"


def test_flash_where_it_cannot_run_says_why():
    why = flash_available(CPU, torch.float32)
    assert why is not None
    with pytest.raises(ModelError) as error:
        resolve_backend("flash", CPU, torch.float32)
    message = str(error.value)
    assert message.startswith("--attn flash: ") and "\n" not in message
    assert ("pip install 'llava-cli[flash]'" in message) or ("CUDA" in message)
    with pytest.raises(ModelError, match="unknown attention backend 'fast'"):
        resolve_backend("fast", CPU, torch.float32)


def test_attention_flags_in_the_cli(tiny_model, media_files, env):
    args = ["ask", "-m", str(tiny_model), "-n", "5", str(media_files["image"]), "Describe it."]
    sdpa, eager = run([*args, "--attn", "sdpa"], env), run([*args, "--attn", "eager"], env)
    assert sdpa.returncode == 0 and eager.returncode == 0 and sdpa.stdout == eager.stdout
    flash = run([*args, "--attn", "flash"], env)
    assert flash.returncode == 1 and flash.stdout == ""
    assert flash.stderr.startswith("llava: error: --attn flash: ") and flash.stderr.count("\n") == 1
    bad = run([*args, "--attn", "fast"], env)
    assert bad.returncode == 2 and "--attn must be one of auto, sdpa, flash, eager" in bad.stderr


# -- quantization -------------------------------------------------------------------------------------

LM_LINEARS = ("attn.q", "attn.k", "attn.v", "attn.o", "mlp.gate", "mlp.up", "mlp.down")


def _lm_linear_names(engine: Engine) -> set[str]:
    return {f"text.layers.{i}.{name}" for i in range(len(engine.model.text.layers)) for name in LM_LINEARS}


@pytest.fixture(scope="module")
def quantized(tiny_model):
    if not HAS_BNB:
        pytest.skip("bitsandbytes is not installed (pip install 'llava-cli[quant]')")
    return {mode: Engine.load(tiny_model, device="cpu", dtype="float32", quantize=mode)
            for mode in ("4bit", "4bit-dq", "8bit")}


def test_quantized_layers_are_the_language_models_linears(quantized, engine):
    from llava_cli.nn.quant import quantized_layers

    for mode, q in quantized.items():
        assert set(quantized_layers(q.model)) == _lm_linear_names(q), mode
        # The vision tower, projector, embeddings and LM head keep the compute dtype.
        for name, param in q.model.named_parameters():
            if not name.startswith("text.layers.") or "norm" in name:
                assert param.dtype == torch.float32, (mode, name)
        assert q.model.text.lm_head.weight.dtype == torch.float32


def _linear_bytes(engine: Engine) -> int:
    """Bytes the language model's linears store (weights, biases, quantization state)."""
    return sum(t.numel() * t.element_size() for name in _lm_linear_names(engine)
               for t in engine.model.get_submodule(name).state_dict().values() if isinstance(t, torch.Tensor))


def test_quantized_weights_are_smaller(quantized, engine):
    full = _linear_bytes(engine)
    assert _linear_bytes(quantized["4bit"]) <= 0.2 * full  # 4 bits of 32, plus scales
    # Double quantization stores the NF4 blocks' scales themselves in 8 bits (on tiny layers
    # its extra tables outweigh that saving, so the types are what is checked).
    for name in _lm_linear_names(engine):
        plain = quantized["4bit"].model.get_submodule(name).weight
        double = quantized["4bit-dq"].model.get_submodule(name).weight
        assert torch.equal(plain.data, double.data)
        assert plain.quant_state.absmax.dtype == torch.float32 and plain.quant_state.state2 is None
        assert double.quant_state.absmax.dtype == torch.uint8 and double.quant_state.state2 is not None
    assert _linear_bytes(quantized["8bit"]) <= 0.3 * full


def test_4bit_computes_what_its_dequantized_weights_compute(quantized, engine, tiny_model, media_files):
    """The NF4 model's logits are those of a float model holding the dequantized weights:
    the quantized layers are wired in where the float ones were, biases and all.

    bitsandbytes' CPU kernels compute in bfloat16 where the CPU has it, so "the same" is
    measured against the quantization error itself: the dequantized float model must be
    far closer to the NF4 model than the original float model is."""
    import bitsandbytes.functional as bnbf

    media = [load_media(media_files["image"])]
    original = engine.logits(engine.prepare(media, "Describe it."))
    for mode in ("4bit", "4bit-dq"):
        q = quantized[mode]
        dequantized = Engine.load(tiny_model, device="cpu", dtype="float32")
        for name in _lm_linear_names(q):
            layer = q.model.get_submodule(name)
            weight = bnbf.dequantize_4bit(layer.weight.data, layer.weight.quant_state).to(torch.float32)
            dequantized.model.get_submodule(name).weight.data.copy_(weight)
        prepared = q.prepare(media, "Describe it.")
        ours = q.logits(prepared)
        expected = dequantized.logits(dequantized.prepare(media, "Describe it."))
        wiring, quantization = (ours - expected).abs().max().item(), (ours - original).abs().max().item()
        assert wiring <= 0.1 * quantization, (mode, wiring, quantization)
        assert list(q.answer(prepared, Sampling(max_new_tokens=6)).tokens())  # and it answers


def test_8bit_stays_close_to_the_float_model(quantized, engine, media_files):
    media = [load_media(media_files["image"])]
    q = quantized["8bit"]
    ours, full = q.logits(q.prepare(media, "Describe it.")), engine.logits(engine.prepare(media, "Describe it."))
    assert (ours - full).abs().max().item() <= 0.05 * full.abs().max().item()
    assert torch.nn.functional.cosine_similarity(ours, full, dim=0).item() > 0.999


def test_quantize_without_bitsandbytes_says_what_to_install(monkeypatch):
    from llava_cli.nn import quant

    real = importlib.util.find_spec
    monkeypatch.setattr(quant.importlib.util, "find_spec",
                        lambda name, *a: None if name == "bitsandbytes" else real(name, *a))
    with pytest.raises(ModelError) as error:
        quant.Quantizer.create("4bit", CPU, torch.float32)
    assert str(error.value) == "--quantize 4bit needs bitsandbytes: pip install 'llava-cli[quant]'"


def test_quantize_on_an_unsupported_device_says_what_to_use():
    from llava_cli.nn import quant

    if not HAS_BNB:
        pytest.skip("bitsandbytes is not installed")
    with pytest.raises(ModelError, match=r"bitsandbytes does not run on mps; use --device cuda"):
        quant.Quantizer.create("8bit", torch.device("mps"), torch.float16)
    with pytest.raises(ModelError, match="unknown quantization '3bit'"):
        quant.Quantizer.create("3bit", CPU, torch.float32)


@pytest.mark.skipif(not HAS_BNB, reason="bitsandbytes is not installed")
def test_quantize_in_the_cli(tiny_model, media_files, env):
    args = ["ask", "-m", str(tiny_model), "-n", "5", str(media_files["image"]), "Describe it."]
    for mode in ("4bit", "8bit"):
        result = run([*args, "--quantize", mode], env)
        assert result.returncode == 0 and result.stdout.strip(), result.stderr
        assert result.stderr == ""  # bitsandbytes' developer logging stays off the terminal


# -- GPU only: run where a CUDA device is lent -----------------------------------------------------

@pytest.mark.gpu
@pytest.mark.skipif(not HAS_BNB, reason="bitsandbytes is not installed")
def test_gpu_4bit_peak_memory_is_under_40_percent_of_bf16(tmp_path):
    from support.checkpoints.next import NextSpec, make_next

    # Big enough that the language model's linears dominate, as in a 7B checkpoint.
    folder = make_next(tmp_path / "mid", NextSpec("llava-hf/llava-v1.6-vicuna-7b-hf", "vicuna", "trained",
                                                  hidden=1024, layers=8, heads=16, kv_heads=16, seed=4,
                                                  text_config={"pad_token_id": 0, "intermediate_size": 4096}))
    peaks = {}
    for mode in (None, "4bit"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        engine = Engine.load(folder, device="cuda", dtype="bfloat16", quantize=mode)
        prepared = engine.prepare([], "Describe a cat.")
        list(engine.answer(prepared, Sampling(max_new_tokens=8)).tokens())
        peaks[mode] = torch.cuda.max_memory_allocated()
        del engine
    assert peaks["4bit"] <= 0.4 * peaks[None], peaks


@pytest.mark.gpu
def test_gpu_flash_and_sdpa_agree(swa_model, tmp_path):
    if flash_available(torch.device("cuda"), torch.bfloat16) is not None:
        pytest.skip(flash_available(torch.device("cuda"), torch.bfloat16))
    from support.media import make_image

    media = [load_media(make_image(tmp_path / "photo.png", size=(640, 480)))]
    engine = Engine.load(swa_model, device="cuda", dtype="bfloat16", attn="flash")
    prepared = engine.prepare(media, "What is in the picture?")
    flash = engine.logits(prepared)
    engine.set_attention("sdpa")
    sdpa = engine.logits(prepared)
    assert (flash - sdpa).abs().max().item() <= 2e-2 * sdpa.abs().max().item()


@pytest.mark.gpu
def test_gpu_compiled_decode_gives_identical_greedy_tokens(swa_model):
    plain = Engine.load(swa_model, device="cuda", dtype="float32")
    compiled = Engine.load(swa_model, device="cuda", dtype="float32", compile=True)
    greedy = Sampling(max_new_tokens=24)
    expected = list(plain.answer(plain.prepare([], "Tell me a story."), greedy).tokens())
    assert list(compiled.answer(compiled.prepare([], "Tell me a story."), greedy).tokens()) == expected

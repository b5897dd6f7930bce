"""--quantize 4bit / 4bit-dq on CPU runs every layer shape (issue 11).

bitsandbytes (>= 0.49) repacks a CPU Linear4bit's weight for its fused AVX512-BF16 kernel at
the first forward in eval mode, on CPUs with that feature, and the repacking only takes
out_features % 32 == 0 and in_features % 64 == 0 (the NF4 block size): a 64 -> 16 k/v
projection died with "AssertionError: N must be divisible by block_n". Such layers are now
kept on bitsandbytes' generic path (dequantize, then matmul), so they compute exactly what
their dequantized weights compute.

The repacking is plain PyTorch that runs before any kernel, so a CPU without AVX512-BF16 can
still be made to take it (by telling new layers the CPU has the feature): the tests below
fail without the fix on any CPU, and also run the native path where this CPU has it.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

bnb = pytest.importorskip("bitsandbytes")
import bitsandbytes.functional as bnbf  # noqa: E402

from llava_cli.errors import ModelError  # noqa: E402
from llava_cli.nn import quant  # noqa: E402

CPU = torch.device("cpu")
NATIVE_BF16_KERNEL = bool(bnbf.has_avx512bf16())

# (in, out): shapes the fused kernel's repacking refuses (out % 32, in % 64, or both) ...
UNPACKABLE = [(64, 16), (64, 48), (64, 80), (128, 33), (96, 32), (32, 32), (100, 20)]
# ... and ones it takes: the project's tiny test widths and a real Qwen2-0.5B k/v projection.
PACKABLE = [(64, 64), (64, 32), (64, 128), (128, 64), (896, 128)]


class _Model(nn.Module):
    """Just enough of a model for one quantized path: text.layers.0.attn.k."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.text = nn.Module()
        self.text.layers = nn.ModuleList([nn.Module()])
        self.text.layers[0].attn = nn.Module()
        self.text.layers[0].attn.k = linear


def _quantized(mode: str, in_features: int, out_features: int, *, bias: bool = False):
    """A layer put in place by the Quantizer, as loading does, a model in eval mode, and the
    float function of the layer's dequantized weights (read before any forward: the first
    forward may repack the weights for the fused kernel)."""
    torch.manual_seed(in_features * 1000 + out_features)
    linear = nn.Linear(in_features, out_features, bias=bias)
    if bias:
        nn.init.normal_(linear.bias, std=0.1)
    model = _Model(linear)
    quantizer = quant.Quantizer.create(mode, CPU, torch.float32)
    path = "text.layers.0.attn.k"
    assert quantizer.wants(path, linear)
    layer = quantizer.quantize(model, path, linear, linear.weight.detach().clone())
    model.eval()
    if mode == "8bit":  # row-wise int8 weights and their scales
        weight = layer.weight.data.float() * layer.weight.SCB.float().unsqueeze(1) / 127
    else:
        weight = bnbf.dequantize_4bit(layer.weight.data, layer.weight.quant_state).float()
    bias = None if layer.bias is None else layer.bias.detach().float().clone()
    return model, layer, lambda x: nn.functional.linear(x, weight, bias)


def _forward(model: _Model, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():  # as the engine runs
        return model.text.layers[0].attn.k(x)


@pytest.fixture(params=["native", "as-on-avx512-bf16"])
def cpu_kind(request, monkeypatch):
    """Run on this CPU as it is, and as if it had AVX512-BF16 (new layers read the feature
    at construction); the second is skipped where it would change nothing."""
    if request.param == "as-on-avx512-bf16":
        if NATIVE_BF16_KERNEL:
            pytest.skip("this CPU has AVX512-BF16: the native run covers it")
        monkeypatch.setattr(bnb.nn.modules, "has_avx512bf16", lambda: True)
    return request.param


# -- the rule ----------------------------------------------------------------------------------------

def test_the_rule_is_the_one_bitsandbytes_applies():
    """cpu_packable() says yes exactly where bitsandbytes' repacking works (plain PyTorch,
    so this holds on any CPU). If bitsandbytes relaxes its rule this fails: update the rule."""
    convert = getattr(bnbf, "_convert_weight_packed_for_cpu", None)
    if convert is None:
        pytest.skip("this bitsandbytes has no fused CPU kernel to refuse shapes")
    for in_features, out_features in UNPACKABLE + PACKABLE + [(64, 96), (192, 32), (96, 96)]:
        weight = torch.randn(out_features, in_features)
        packed, state = bnbf.quantize_4bit(weight, quant_type="nf4", blocksize=64)
        try:
            convert(packed, state)
            took = True
        except (AssertionError, RuntimeError):
            took = False
        assert took == quant.cpu_packable(in_features, out_features, 64), (in_features, out_features)


def test_real_model_widths_fit_the_fused_kernel():
    """No real checkpoint needs the generic path: hidden, k/v and MLP widths of Qwen2-0.5B,
    Vicuna-7B, Mistral-7B and Qwen2-7B are all multiples of 64."""
    for hidden, kv, inter in [(896, 128, 4864), (4096, 4096, 11008), (4096, 1024, 14336), (3584, 512, 18944)]:
        for in_features, out_features in [(hidden, hidden), (hidden, kv), (hidden, inter), (inter, hidden)]:
            assert quant.cpu_packable(in_features, out_features), (in_features, out_features)


# -- layers that the fused kernel refuses ------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["4bit", "4bit-dq"])
@pytest.mark.parametrize("shape", UNPACKABLE, ids=lambda s: f"{s[0]}to{s[1]}")
def test_unpackable_shapes_compute_their_dequantized_weights(mode, shape, cpu_kind):
    """Before the fix these raised AssertionError (out % 32) or RuntimeError (in % 64) at the
    first forward on an AVX512-BF16 CPU. Off the fused kernel the result is the dequantized
    float model's, to float32 rounding, for a single token and for a prompt."""
    model, layer, reference = _quantized(mode, *shape, bias=True)
    for seq in (1, 5):
        x = torch.randn(1, seq, shape[0])
        ours = _forward(model, x)
        assert ours.shape == (1, seq, shape[1])
        torch.testing.assert_close(ours, reference(x), rtol=1e-5, atol=1e-5)
    assert layer.support_avx512bf16_for_cpu is False
    assert not getattr(layer.weight.quant_state, "packing_format_for_cpu", False)


def test_unquantized_bitsandbytes_layer_still_fails_there(monkeypatch):
    """The failure the fix avoids is real: a plain bitsandbytes layer of such a shape, on an
    AVX512-BF16 CPU (or told it is on one), fails at its first forward."""
    if not NATIVE_BF16_KERNEL:
        monkeypatch.setattr(bnb.nn.modules, "has_avx512bf16", lambda: True)
    with torch.device("meta"):
        layer = bnb.nn.Linear4bit(64, 16, bias=False, compute_dtype=torch.float32, quant_type="nf4")
    layer.weight = bnb.nn.Params4bit(torch.randn(16, 64), requires_grad=False, quant_type="nf4",
                                     module=layer).to(CPU)
    layer.eval()
    with pytest.raises(AssertionError, match="N must be divisible by block_n"), torch.inference_mode():
        layer(torch.randn(1, 1, 64))


# -- layers that it takes ------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["4bit", "4bit-dq"])
@pytest.mark.parametrize("shape", PACKABLE, ids=lambda s: f"{s[0]}to{s[1]}")
def test_packable_shapes_keep_the_fused_kernel(mode, shape):
    """Shapes the kernel takes stay on it where the CPU has it (it computes in bfloat16, so
    "close" is bfloat16-close); elsewhere bitsandbytes' generic path runs."""
    model, layer, reference = _quantized(mode, *shape, bias=True)
    assert getattr(layer, "support_avx512bf16_for_cpu", False) == NATIVE_BF16_KERNEL
    for seq in (1, 5):
        x = torch.randn(1, seq, shape[0])
        ours, expected = _forward(model, x), reference(x)
        scale = expected.abs().max().item()
        assert (ours - expected).abs().max().item() <= 2e-2 * scale, (mode, shape, seq)
    packed = getattr(layer.weight.quant_state, "packing_format_for_cpu", False)
    assert packed == NATIVE_BF16_KERNEL


# -- 8-bit has no such limit ---------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(64, 16), (96, 32), (33, 17)], ids=lambda s: f"{s[0]}to{s[1]}")
def test_8bit_takes_any_shape(shape):
    model, layer, reference = _quantized("8bit", *shape, bias=True)
    for seq in (1, 5):
        x = torch.randn(1, seq, shape[0])
        ours, expected = _forward(model, x), reference(x)
        assert (ours - expected).abs().max().item() <= 2e-2 * expected.abs().max().item(), (shape, seq)


def test_quantizer_still_refuses_what_it_cannot_run():
    with pytest.raises(ModelError, match="does not run on mps"):
        quant.Quantizer.create("4bit", torch.device("mps"), torch.float32)

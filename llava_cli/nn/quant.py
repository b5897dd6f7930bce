"""4-bit and 8-bit weights for the language model, through bitsandbytes.

Only the decoder's linear layers (attention q/k/v/o, MLP gate/up/down) are quantized, as
a bitsandbytes load of the reference does: they are >95% of a 7B model's bytes. The
vision tower, projector, embeddings and LM head stay in the compute dtype.

Each weight is quantized as it is read from its shard: its 16-bit copy lives only until
its quantized form is on the device, so a 4-bit load never holds the 16-bit model.
"""

from __future__ import annotations

import importlib.util
import logging
import re
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ModelError

MODES = ("4bit", "4bit-dq", "8bit")  # NF4; NF4 with double quantization; LLM.int8()
CHOICES = ("none", *MODES)

_QUANTIZED = re.compile(r"^text\.layers\.\d+\.(?:attn\.[qkvo]|mlp\.(?:gate|up|down))$")

# bitsandbytes >= 0.49 runs a CPU Linear4bit through a fused kernel on CPUs with AVX512-BF16:
# at the layer's first forward in eval mode without grad, Linear4bit.forward repacks the NF4
# weight (functional._convert_weight_packed_for_cpu), and that repacking takes only
#   out_features % 32 == 0  (else "AssertionError: N must be divisible by block_n") and
#   in_features % blocksize == 0  (blocksize 64; else a RuntimeError reshaping the scales).
# The rule depends on the shape alone (not on dtype or sequence length). Layers that break it
# are kept on bitsandbytes' generic path (dequantize, then matmul): the same result, slower.
# Every real LLaVA width passes; tiny or unusual ones (e.g. 64 -> 16 k/v projections) do not.
_CPU_PACK_BLOCK_N = 32


def cpu_packable(in_features: int, out_features: int, blocksize: int = 64) -> bool:
    """Whether bitsandbytes' fused AVX512-BF16 CPU kernel can take a 4-bit layer of this shape."""
    return out_features % _CPU_PACK_BLOCK_N == 0 and in_features % blocksize == 0


@dataclass(frozen=True)
class Quantizer:
    mode: str
    device: torch.device
    compute_dtype: torch.dtype

    @classmethod
    def create(cls, mode: str, device: torch.device, compute_dtype: torch.dtype) -> "Quantizer":
        if mode not in MODES:
            raise ModelError(f"unknown quantization '{mode}' (use {', '.join(CHOICES)})")
        if importlib.util.find_spec("bitsandbytes") is None:
            raise ModelError(f"--quantize {mode} needs bitsandbytes: pip install 'llava-cli[quant]'")
        if device.type not in ("cuda", "cpu"):
            raise ModelError(f"--quantize {mode}: bitsandbytes does not run on {device.type}; "
                             "use --device cuda (or cpu), or leave out --quantize")
        # bitsandbytes logs advice meant for library developers (an optional CPU kernel
        # package it would fetch from the Hub; a dtype cast on every 8-bit matmul) on
        # every call: not for a terminal user's stderr.
        logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
        return cls(mode, device, compute_dtype)

    @staticmethod
    def wants(module_path: str, module: nn.Module) -> bool:
        return isinstance(module, nn.Linear) and _QUANTIZED.match(module_path) is not None

    def quantize(self, model: nn.Module, module_path: str, linear: nn.Linear, weight: torch.Tensor) -> nn.Module:
        """Put a quantized layer holding ``weight`` (CPU, any float dtype) where ``linear``
        is in ``model``; returns it. A bias already loaded into ``linear`` moves over."""
        import bitsandbytes as bnb

        has_bias = linear.bias is not None
        weight = weight.to(self.compute_dtype)
        with torch.device("meta"):
            if self.mode == "8bit":
                layer = bnb.nn.Linear8bitLt(linear.in_features, linear.out_features, bias=has_bias,
                                            has_fp16_weights=False, threshold=6.0)
            else:
                layer = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=has_bias,
                                          compute_dtype=self.compute_dtype, quant_type="nf4",
                                          compress_statistics=self.mode == "4bit-dq")
        if self.mode == "8bit":
            param = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False)
        else:
            param = bnb.nn.Params4bit(weight, requires_grad=False, quant_type="nf4",
                                      compress_statistics=self.mode == "4bit-dq", quant_storage=torch.uint8,
                                      module=layer)
        layer.weight = param.to(self.device)  # quantizes on the way
        if self.mode != "8bit" and self.device.type == "cpu" and \
                not cpu_packable(linear.in_features, linear.out_features, layer.weight.blocksize):
            # Off the fused kernel, whose repacking would fail at the first forward (above).
            # bitsandbytes reads this flag in every forward; on older versions it is unused.
            layer.support_avx512bf16_for_cpu = False
        if has_bias:
            layer.bias = linear.bias  # loaded already, or still meta and filled later
        parent_path, _, leaf = module_path.rpartition(".")
        setattr(model.get_submodule(parent_path) if parent_path else model, leaf, layer)
        return layer


def quantized_layers(model: nn.Module) -> list[str]:
    """Names of the modules that hold bitsandbytes weights (for tests and --verbose)."""
    names = []
    for name, module in model.named_modules():
        if type(module).__module__.startswith("bitsandbytes"):
            names.append(name)
    return names

"""Side-by-side benchmark: llava-cli's engine vs the reference (transformers) on the
same random checkpoint, frames and prompt.

    python bench/bench_ask.py                         # CPU: tiny and mid (~0.5B LM), 8 frames
    python bench/bench_ask.py --sizes tiny            # just the tiny one
    python bench/bench_ask.py --variants plain,compile,4bit --sizes mid
    # GPU (full-size random weights, LLaVA-NeXT-Video-7B and OneVision-7B shapes):
    python bench/bench_ask.py --device cuda --dtype bfloat16 --sizes next-7b,ov-7b \
        --frames 8,32 --variants plain,compile,4bit

Each run is its own subprocess so peak RSS (and peak GPU memory) is its own. Prints a
table: load time, time to first token (media preprocessing + prefill + first token),
decode tokens/s (EOS ignored, so both decode the same number of tokens), RSS after
loading and at the peak, peak GPU memory on CUDA, the weights' bytes, and on CUDA the
decode speed as a share of the HBM-bandwidth limit (weight bytes / bandwidth per token).

Variants of ours: plain (SDPA or FlashAttention-2 by --attn auto), compile (the decode step
under torch.compile), 4bit / 8bit (bitsandbytes). The reference runs plain `generate`
(its default SDPA attention, no compile) and, for 4bit/8bit, its bitsandbytes load.
Needs the test extra (transformers), and bitsandbytes for 4bit/8bit. LLAVA_BENCH_PREFILL_CHUNK
sets our prefill chunk (default 1024; 0 = the whole prompt in one pass).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

SIZES = {
    # LM widths; the vision tower keeps the real 336-px geometry (576 patches per frame).
    "tiny": dict(hidden=64, layers=2, heads=4, kv_heads=2, inter=128, vision_hidden=32, vision_layers=3, vocab=None),
    "mid": dict(hidden=1024, layers=28, heads=16, kv_heads=8, inter=2816, vision_hidden=768, vision_layers=12,
                vocab=32064),
    # LLaVA-NeXT-Video-7B's shapes (Vicuna-7B, CLIP-L/336 up to layer -2): hub_configs.md.
    "next-7b": dict(hidden=4096, layers=32, heads=32, kv_heads=32, inter=11008, vision_hidden=1024,
                    vision_layers=24, vocab=32064, family="next-video"),
    # Qwen2-0.5B's widths (OneVision-0.5B's language model, tied head, its 151,936-row
    # vocabulary) with a SigLIP-B-sized tower, float32 on disk: 2.3 GB, a CPU-sized model.
    "ov-mid": dict(hidden=896, layers=24, heads=14, kv_heads=2, inter=4864, vocab=151936, family="onevision",
                   vision_hidden=768, vision_layers=12, vision_heads=12, vision_inter=3072, tied=True,
                   save_dtype=None),
    # LLaVA-OneVision-7B's shapes (Qwen2-7B, SigLIP-so400m/384).
    "ov-7b": dict(hidden=3584, layers=28, heads=28, kv_heads=4, inter=18944, vocab=152128, family="onevision"),
}
GPU_BANDWIDTH_GBS = {"H200": 4800, "H100": 3350, "A100": 2039, "L40S": 864, "RTX 4090": 1008}


def peak_rss_mb() -> float:
    """This process's high-water RSS. /proc's VmHWM belongs to the process image;
    ru_maxrss survives exec and would report the parent's peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_checkpoint(size: str, root: Path) -> Path:
    import torch
    from support.checkpoints.next_video import TinySpec, make_next_video

    dims = SIZES[size]
    folder = root / f"{dims.get('family', 'next-video')}-{size}"
    if (folder / "config.json").is_file():
        return folder
    torch.set_num_threads(os.cpu_count() or 1)
    if dims.get("family") == "onevision":
        from support.checkpoints.onevision import make_onevision_sized

        return make_onevision_sized(folder, dims)
    full_size = size.endswith("7b")
    spec = TinySpec(hidden=dims["hidden"], layers=dims["layers"], heads=dims["heads"], kv_heads=dims["kv_heads"],
                    vision_hidden=dims["vision_hidden"], vision_layers=dims["vision_layers"], init_std=0.02,
                    extra_text_config={"intermediate_size": dims["inter"]}
                    | ({"vocab_size": dims["vocab"]} if dims["vocab"] else {}),
                    extra_vision_config={"num_attention_heads": 16, "intermediate_size": 4096} if full_size else {},
                    save_dtype="bfloat16" if full_size else None)
    make_next_video(folder, spec)
    return folder


def make_clip(root: Path) -> Path:
    from support.media import make_video

    path = root / "clip.mp4"
    if not path.is_file():
        make_video(path, frames=96, size=(320, 240), fps=24)
    return path


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _gpu_peak_mb(device: str) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None


def _tensor_bytes(module) -> int:
    seen, total = set(), 0
    for tensor in list(module.parameters()) + list(module.buffers()):
        if tensor.data_ptr() not in seen:
            seen.add(tensor.data_ptr())
            total += tensor.numel() * tensor.element_size()
    return total


def run_ours(folder: str, clip: str, frames: int, new_tokens: int, *, device: str, dtype: str,
             variant: str) -> dict:
    from llava_cli.engine import Engine
    from llava_cli.generate import Sampling
    from llava_cli.media import load_media

    started = time.perf_counter()
    engine = Engine.load(folder, device=device, dtype=dtype, compile=variant == "compile",
                         quantize=variant if variant in ("4bit", "8bit") else None,
                         prefill_chunk=int(os.environ.get("LLAVA_BENCH_PREFILL_CHUNK", "1024")))
    _sync(device)
    load_s = time.perf_counter() - started
    rss_load = peak_rss_mb()
    weights = _tensor_bytes(engine.model)
    text_weights = _tensor_bytes(engine.model.text)
    engine.stop_ids = frozenset()  # decode exactly new_tokens

    def once(tokens: int) -> tuple[float, float]:
        t0 = time.perf_counter()
        media = [load_media(clip, num_frames=frames)]
        prepared = engine.prepare(media, "Why is this funny?")
        first = None
        count = 0
        for _ in engine.answer(prepared, Sampling(max_new_tokens=tokens)).tokens():
            count += 1
            if first is None:
                first = time.perf_counter()
        _sync(device)
        end = time.perf_counter()
        return first - t0, (count - 1) / (end - first)

    once(min(new_tokens, 8))  # warm-up (and, with compile, the compilation)
    ttft, tps = once(new_tokens)
    return dict(load_s=load_s, ttft_s=ttft, decode_tps=tps, rss_load_mb=rss_load, rss_peak_mb=peak_rss_mb(),
                gpu_peak_mb=_gpu_peak_mb(device), weights_mb=weights / 2**20, text_weights=text_weights,
                attn=engine.attention)


def run_reference(folder: str, clip: str, frames: int, new_tokens: int, *, device: str, dtype: str,
                  variant: str) -> dict:
    import av
    import numpy as np
    import torch
    import transformers

    config = json.loads((Path(folder) / "config.json").read_text())
    onevision = config.get("model_type") == "llava_onevision"
    model_class = (transformers.LlavaOnevisionForConditionalGeneration if onevision
                   else transformers.LlavaNextVideoForConditionalGeneration)
    processor_class = transformers.LlavaOnevisionProcessor if onevision else transformers.LlavaNextVideoProcessor
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    kwargs = {}
    if variant in ("4bit", "8bit"):
        kwargs["quantization_config"] = transformers.BitsAndBytesConfig(
            load_in_4bit=variant == "4bit", load_in_8bit=variant == "8bit", bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=torch_dtype)
    started = time.perf_counter()
    model = model_class.from_pretrained(folder, torch_dtype=torch_dtype, **kwargs).eval()
    if not kwargs:
        model = model.to(device)
    processor = processor_class.from_pretrained(folder)
    _sync(device)
    load_s = time.perf_counter() - started
    rss_load = peak_rss_mb()
    weights = _tensor_bytes(model)

    def inputs():
        # The model card's recipe: decode the whole clip, keep uniformly spaced frames.
        with av.open(clip) as container:
            decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        idx = np.arange(0, len(decoded), len(decoded) / frames).astype(int)
        conversation = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "Why is this funny?"}]}]
        prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
        batch = processor(text=prompt, videos=[np.stack([decoded[i] for i in idx])], return_tensors="pt")
        return {k: (v.to(device, torch_dtype) if v.is_floating_point() else v.to(device)) for k, v in batch.items()}

    class Clock(transformers.LogitsProcessor):
        """generate calls its logits processors once per new token, right after that step's
        forward pass: the first call marks the first token, as ours is timed."""

        def __init__(self) -> None:
            self.times: list[float] = []

        def __call__(self, input_ids, scores):
            _sync(device)
            self.times.append(time.perf_counter())
            return scores

    def timed(tokens: int) -> tuple[float, float]:
        clock = Clock()
        t0 = time.perf_counter()
        with torch.no_grad():
            model.generate(**inputs(), max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False,
                           logits_processor=transformers.LogitsProcessorList([clock]))
        _sync(device)
        end = time.perf_counter()
        return clock.times[0] - t0, (len(clock.times) - 1) / (end - clock.times[0])

    timed(2)  # warm-up
    ttft, tps = timed(new_tokens)
    return dict(load_s=load_s, ttft_s=ttft, decode_tps=tps, rss_load_mb=rss_load,
                rss_peak_mb=peak_rss_mb(), gpu_peak_mb=_gpu_peak_mb(device), weights_mb=weights / 2**20,
                text_weights=_tensor_bytes(model.language_model), attn=model.config._attn_implementation)


def child(args) -> None:
    import torch

    torch.manual_seed(0)
    fn = run_ours if args.child == "ours" else run_reference
    print(json.dumps(fn(args.folder, args.clip, args.frames, args.tokens, device=args.device, dtype=args.dtype,
                        variant=args.variant)))


def _median(results: list[dict]) -> dict:
    """Each numeric field's median over repeated runs (the other fields from the first)."""
    import statistics

    merged = dict(results[0])
    for key, value in merged.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            merged[key] = statistics.median(r[key] for r in results)
    return merged


def bandwidth_gbs(device: str) -> float | None:
    """The GPU's HBM bandwidth (GB/s) from its name, or LLAVA_BENCH_BANDWIDTH_GBS."""
    if os.environ.get("LLAVA_BENCH_BANDWIDTH_GBS"):
        return float(os.environ["LLAVA_BENCH_BANDWIDTH_GBS"])
    if not device.startswith("cuda"):
        return None
    import torch

    name = torch.cuda.get_device_name()
    return next((gbs for key, gbs in GPU_BANDWIDTH_GBS.items() if key in name), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="tiny,mid", help=f"comma-separated: {', '.join(SIZES)}")
    parser.add_argument("--frames", default="8", help="comma-separated frame counts")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None, help="default: float32 on CPU, bfloat16 on CUDA")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run each configuration this many times (fresh processes) and print medians")
    parser.add_argument("--variants", default="plain,compile",
                        help="comma-separated: plain, compile, 4bit, 8bit (the reference runs plain, 4bit, 8bit)")
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "llava-bench"))
    parser.add_argument("--child", choices=["ours", "reference"], help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--clip", help=argparse.SUPPRESS)
    parser.add_argument("--variant", default="plain", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    if args.child:
        args.frames = int(args.frames)
        return child(args)

    root = Path(args.workdir)
    root.mkdir(parents=True, exist_ok=True)
    clip = make_clip(root)
    variants = args.variants.split(",")
    runs = [("ours", v) for v in variants] + [("reference", v) for v in variants if v != "compile"]
    rows = []
    for size in args.sizes.split(","):
        folder = make_checkpoint(size, root)
        for frames in args.frames.split(","):
            for impl, variant in runs:
                cmd = [sys.executable, __file__, "--child", impl, "--folder", str(folder), "--clip", str(clip),
                       "--frames", frames, "--tokens", str(args.tokens), "--device", args.device,
                       "--dtype", args.dtype, "--variant", variant]
                results = []
                for _ in range(args.repeat):
                    out = subprocess.run(cmd, capture_output=True, text=True)
                    if out.returncode != 0:
                        tail = out.stderr.strip().splitlines()[-1:] or ["?"]
                        print(f"# {impl} {variant} failed on {size}: {tail[0]}", file=sys.stderr)
                        break
                    results.append(json.loads(out.stdout.strip().splitlines()[-1]))
                if results:
                    rows.append((size, frames, impl, variant, _median(results)))

    bandwidth = bandwidth_gbs(args.device)
    header = ("model", "frames", "impl", "variant", "attn", "load s", "TTFT s", "decode tok/s", "RSS after load MB",
              "peak RSS MB", "peak GPU MB", "weights MB", "% of HBM limit")
    print(f"device: {args.device}, CPU threads: {os.cpu_count()}, new tokens: {args.tokens}, {args.dtype}, "
          f"median of {args.repeat} run(s)"
          + (f", HBM {bandwidth:.0f} GB/s" if bandwidth else ""))
    print(" | ".join(header))
    print(" | ".join("---" for _ in header))
    for size, frames, impl, variant, r in rows:
        gpu = f"{r['gpu_peak_mb']:.0f}" if r.get("gpu_peak_mb") is not None else "–"
        # Each decode step reads every language-model weight once: tokens/s × bytes ≤ bandwidth.
        limit = f"{100 * r['decode_tps'] * r['text_weights'] / (bandwidth * 1e9):.0f}%" if bandwidth else "–"
        print(f"{size} | {frames} | {impl} | {variant} | {r['attn']} | {r['load_s']:.2f} | {r['ttft_s']:.2f} | "
              f"{r['decode_tps']:.1f} | {r['rss_load_mb']:.0f} | {r['rss_peak_mb']:.0f} | {gpu} | "
              f"{r['weights_mb']:.0f} | {limit}")


if __name__ == "__main__":
    main()

"""Side-by-side benchmark: llava-cli's engine vs the reference (transformers) on the
same random LLaVA-NeXT-Video checkpoint, frames and prompt.

    python bench/bench_ask.py                 # tiny and mid-size (~0.5B LM), 8 frames, CPU
    python bench/bench_ask.py --sizes tiny    # just the tiny one

Each implementation runs in its own subprocess so peak RSS is its own. Prints a table:
load time, time to first token (media preprocessing + prefill + first token), decode
tokens/s (EOS ignored, so both decode the same number of tokens), peak RSS after loading
and at the end, and the weights' size in memory. Needs the test extra (transformers).
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
}


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
    from checkpoints import TinySpec, make_next_video

    dims = SIZES[size]
    folder = root / f"next-video-{size}"
    if (folder / "config.json").is_file():
        return folder
    spec = TinySpec(hidden=dims["hidden"], layers=dims["layers"], heads=dims["heads"], kv_heads=dims["kv_heads"],
                    vision_hidden=dims["vision_hidden"], vision_layers=dims["vision_layers"], init_std=0.02,
                    extra_text_config={"intermediate_size": dims["inter"]}
                    | ({"vocab_size": dims["vocab"]} if dims["vocab"] else {}))
    torch.set_num_threads(os.cpu_count() or 1)
    make_next_video(folder, spec)
    return folder


def make_clip(root: Path) -> Path:
    from media_factory import make_video

    path = root / "clip.mp4"
    if not path.is_file():
        make_video(path, frames=96, size=(320, 240), fps=24)
    return path


def run_ours(folder: str, clip: str, frames: int, new_tokens: int) -> dict:
    from llava_cli.engine import Engine
    from llava_cli.generate import Sampling
    from llava_cli.media import load_media

    started = time.perf_counter()
    engine = Engine.load(folder, device="cpu", dtype="float32")
    load_s = time.perf_counter() - started
    rss_load = peak_rss_mb()
    weights_mb = sum(p.numel() * p.element_size() for p in engine.model.parameters()) / 2**20
    engine.stop_ids = frozenset()  # decode exactly new_tokens

    def once(tokens: int) -> tuple[float, float]:
        t0 = time.perf_counter()
        media = [load_media(clip, num_frames=frames)]
        prepared = engine.prepare(media, "Why is this funny?")
        first = None
        count = 0
        for _ in engine.generate(prepared, Sampling(max_new_tokens=tokens)):
            count += 1
            if first is None:
                first = time.perf_counter()
        end = time.perf_counter()
        return first - t0, (count - 1) / (end - first)

    once(2)  # warm-up
    ttft, tps = once(new_tokens)
    return dict(load_s=load_s, ttft_s=ttft, decode_tps=tps, rss_load_mb=rss_load, rss_peak_mb=peak_rss_mb(),
                weights_mb=weights_mb)


def run_reference(folder: str, clip: str, frames: int, new_tokens: int) -> dict:
    import av
    import numpy as np
    import torch
    from transformers import LlavaNextVideoForConditionalGeneration, LlavaNextVideoProcessor

    started = time.perf_counter()
    model = LlavaNextVideoForConditionalGeneration.from_pretrained(folder, torch_dtype=torch.float32).eval()
    processor = LlavaNextVideoProcessor.from_pretrained(folder)
    load_s = time.perf_counter() - started
    rss_load = peak_rss_mb()
    weights_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20

    def inputs():
        # The model card's recipe: decode the whole clip, keep uniformly spaced frames.
        with av.open(clip) as container:
            decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        idx = np.arange(0, len(decoded), len(decoded) / frames).astype(int)
        conversation = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "Why is this funny?"}]}]
        prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
        return processor(text=prompt, videos=[np.stack([decoded[i] for i in idx])], return_tensors="pt")

    def timed(tokens: int) -> float:
        t0 = time.perf_counter()
        with torch.no_grad():
            model.generate(**inputs(), max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
        return time.perf_counter() - t0

    timed(2)  # warm-up
    ttft = timed(1)
    full = timed(new_tokens)
    return dict(load_s=load_s, ttft_s=ttft, decode_tps=(new_tokens - 1) / (full - ttft), rss_load_mb=rss_load,
                rss_peak_mb=peak_rss_mb(), weights_mb=weights_mb)


def child(args) -> None:
    import torch

    torch.manual_seed(0)
    fn = run_ours if args.child == "ours" else run_reference
    print(json.dumps(fn(args.folder, args.clip, args.frames, args.tokens)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="tiny,mid")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "llava-bench"))
    parser.add_argument("--child", choices=["ours", "reference"], help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--clip", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    root = Path(args.workdir)
    root.mkdir(parents=True, exist_ok=True)
    clip = make_clip(root)
    rows = []
    for size in args.sizes.split(","):
        folder = make_checkpoint(size, root)
        for impl in ("ours", "reference"):
            cmd = [sys.executable, __file__, "--child", impl, "--folder", str(folder), "--clip", str(clip),
                   "--frames", str(args.frames), "--tokens", str(args.tokens)]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode != 0:
                print(out.stderr, file=sys.stderr)
                raise SystemExit(f"{impl} failed on {size}")
            rows.append((size, impl, json.loads(out.stdout.strip().splitlines()[-1])))

    header = ("model", "impl", "load s", "TTFT s", "decode tok/s", "RSS after load MB", "peak RSS MB", "weights MB")
    print(f"CPU threads: {os.cpu_count()}, frames: {args.frames}, new tokens: {args.tokens}, float32")
    print(" | ".join(header))
    print(" | ".join("---" for _ in header))
    for size, impl, r in rows:
        print(f"{size} | {impl} | {r['load_s']:.2f} | {r['ttft_s']:.2f} | {r['decode_tps']:.1f} | "
              f"{r['rss_load_mb']:.0f} | {r['rss_peak_mb']:.0f} | {r['weights_mb']:.0f}")


if __name__ == "__main__":
    main()

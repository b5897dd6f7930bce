"""Frame-sampling benchmark: llava-cli's decoder vs the reference recipe vs decord.

    python bench/decode.py                  # 10-minute 1080p h264 clip, 32 frames
    python bench/decode.py --minutes 2      # a shorter clip (its own cache entry)
    python bench/decode.py --make-clip      # only encode the clip (once; it is cached)

The clip is made here, once, with PyAV/libx264 (ultrafast, GOP exactly 250, no scene
cuts, 25 fps, frame threads so one slice per frame as the ffmpeg CLI makes it) and cached
under the user cache folder (LLAVA_BENCH_CACHE overrides); --clip times any other file.
Its content is a textured picture panning in a different direction each GOP, so every
frame differs and the encoder does real motion search, as with camera footage.

With 32 targets spread over 60 GOPs of 250, ours must decode 3,520 frames (each target's
GOP up to it) against the reference's 14,532: a 4.1x saving in work. The rest of the
speed-up comes from decoding independent runs on all cores; the reference decodes on
one (PyAV's default slice threading has nothing to split in a one-slice frame).

Each way of sampling runs in its own subprocess so its peak RSS (VmHWM) is its own, after
one untimed warm-up read of the file so all three start from a warm page cache:

- ours: `load_media(clip, FrameSpec(frames=32))`: one packet-index pass, then seek to
  the keyframe before each target and decode forward, with frame threading.
- reference: `read_video_pyav` from the LLaVA-NeXT-Video / OneVision model cards,
  verbatim: decode sequentially from the start through the last sampled index (PyAV's
  default threading), keep the sampled frames, convert them to RGB at the end.
- decord: `VideoReader(clip).get_batch(indices)` (skipped when decord is not installed).

All three must return the same 32 indices; ours and the reference must be identical
pixel for pixel (checked here on a digest of the frames).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

FPS = 25
GOP = 250
WIDTH, HEIGHT = 1920, 1080


def peak_rss_mb() -> float:
    """This process's high-water RSS; /proc's VmHWM belongs to this process image."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cache_dir() -> Path:
    from platformdirs import user_cache_dir

    folder = Path(os.environ.get("LLAVA_BENCH_CACHE") or Path(user_cache_dir("llava-cli")) / "bench")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def make_clip(minutes: float) -> Path:
    """Encode (once) a `minutes`-long 1080p25 h264 clip with keyframes exactly every GOP."""
    import av
    import numpy as np

    path = cache_dir() / f"pan-{minutes:g}min-1080p{FPS}-gop{GOP}-x264-ultrafast.mp4"
    if path.is_file():
        return path
    frames = round(minutes * 60 * FPS)
    partial = path.with_suffix(".partial.mp4")
    rng = np.random.default_rng(0)
    # A canvas larger than the frame, panned a few pixels per frame. Smooth gradients plus
    # mid-frequency texture: compressible, but not trivially so.
    canvas_h, canvas_w = HEIGHT + 512, WIDTH + 512
    y = np.arange(canvas_h)[:, None]
    x = np.arange(canvas_w)[None, :]
    texture = rng.integers(0, 48, size=(canvas_h // 8 + 1, canvas_w // 8 + 1), dtype=np.uint8)
    texture = np.kron(texture, np.ones((8, 8), dtype=np.uint8))[:canvas_h, :canvas_w]
    luma = ((x * 3 + y * 2) % 200 + texture).astype(np.uint8)
    cb = ((x // 2 * 5) % 255).astype(np.uint8)[::2, ::2] + np.zeros((canvas_h // 2, 1), np.uint8)
    cr = ((y // 2 * 7) % 255).astype(np.uint8)[::2, ::2] + np.zeros((1, canvas_w // 2), np.uint8)
    directions = [(1, 2), (-2, 1), (2, -1), (-1, -2), (3, 0), (0, 3)]
    started = time.perf_counter()
    with av.open(str(partial), mode="w") as output:
        stream = output.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.codec_context.gop_size = GOP
        # Frame threads, as the ffmpeg CLI uses with x264: one slice per frame. (PyAV's
        # default, slice threads, makes x264 cut every frame into one slice per core, an
        # encoding few real files have, which lets even a plain decoder use every core.)
        stream.thread_type = "FRAME"
        stream.options = {"preset": "ultrafast", "crf": "23",
                          "x264-params": f"keyint={GOP}:min-keyint={GOP}:scenecut=0"}
        planes = np.empty((HEIGHT * 3 // 2, WIDTH), dtype=np.uint8)
        ox, oy = 256, 256
        for index in range(frames):
            dx, dy = directions[(index // GOP) % len(directions)]
            ox = (ox + dx) % 512
            oy = (oy + dy) % 512
            planes[:HEIGHT] = luma[oy : oy + HEIGHT, ox : ox + WIDTH]
            # The frame number as a bright bar whose length changes every frame.
            planes[HEIGHT - 24 : HEIGHT, : (index * 7) % WIDTH] = 235
            chroma = planes[HEIGHT:].reshape(2, HEIGHT // 2, WIDTH // 2)
            chroma[0] = cb[oy // 2 : oy // 2 + HEIGHT // 2, ox // 2 : ox // 2 + WIDTH // 2]
            chroma[1] = cr[oy // 2 : oy // 2 + HEIGHT // 2, ox // 2 : ox // 2 + WIDTH // 2]
            frame = av.VideoFrame.from_ndarray(planes, format="yuv420p")
            for packet in stream.encode(frame):
                output.mux(packet)
            if index % (FPS * 60) == 0 and index:
                rate = index / (time.perf_counter() - started)
                print(f"  encoded {index / FPS / 60:.0f} min ({rate:.0f} fps)", file=sys.stderr)
        for packet in stream.encode():
            output.mux(packet)
    partial.rename(path)
    took = time.perf_counter() - started
    print(f"encoded {frames} frames in {took:.0f}s ({frames / took:.0f} fps): {path} "
          f"({path.stat().st_size / 1e6:.0f} MB)", file=sys.stderr)
    return path


# --- the three contenders (each runs in a child process) --------------------------------


def reference_indices(total: int, frames: int) -> list[int]:
    import numpy as np

    return np.arange(0, total, total / frames).astype(int).tolist()


def read_video_pyav(container, indices):  # noqa: ANN001, ANN201 - verbatim from the model cards
    import numpy as np

    frames = []
    container.seek(0)
    start_index = indices[0]
    end_index = indices[-1]
    for i, frame in enumerate(container.decode(video=0)):
        if i > end_index:
            break
        if i >= start_index and i in indices:
            frames.append(frame)
    return np.stack([x.to_ndarray(format="rgb24") for x in frames])


def run_ours(clip: Path, frames: int) -> dict:
    from llava_cli.media import FrameSpec, load_media

    started = time.perf_counter()
    media = load_media(clip, FrameSpec(frames=frames))
    took = time.perf_counter() - started
    return {"seconds": took, "indices": media.frame_indices, "digest": digest(media.frames),
            "decoded": media.decoded_frames, "seeks": media.seeks}


def run_reference(clip: Path, frames: int) -> dict:
    import av

    started = time.perf_counter()
    container = av.open(str(clip))
    total = container.streams.video[0].frames
    indices = reference_indices(total, frames)
    pixels = read_video_pyav(container, indices)
    container.close()
    took = time.perf_counter() - started
    return {"seconds": took, "indices": indices, "digest": digest(pixels),
            "decoded": indices[-1] + 1, "seeks": 0}


def run_decord(clip: Path, frames: int) -> dict:
    import decord

    started = time.perf_counter()
    reader = decord.VideoReader(str(clip), ctx=decord.cpu(0))
    indices = reference_indices(len(reader), frames)
    pixels = reader.get_batch(indices).asnumpy()
    took = time.perf_counter() - started
    return {"seconds": took, "indices": indices, "digest": digest(pixels), "decoded": None,
            "seeks": None}


def digest(pixels) -> str:  # noqa: ANN001
    import numpy as np

    # A memoryview, not tobytes(): a copy would add the frames' size to the peak RSS.
    return hashlib.sha256(memoryview(np.ascontiguousarray(pixels)).cast("B")).hexdigest()[:12]


WAYS = {"ours": run_ours, "reference": run_reference, "decord": run_decord}


def child(way: str, clip: Path, frames: int) -> None:
    result = WAYS[way](clip, frames)
    result["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(result))


def warm_page_cache(clip: Path) -> None:
    with clip.open("rb") as handle:
        while handle.read(1 << 24):
            pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=1, help="runs per way; the best is shown")
    parser.add_argument("--ways", default="ours,reference,decord")
    parser.add_argument("--make-clip", action="store_true", help="only encode the clip")
    parser.add_argument("--clip", type=Path, help="time this video file instead of the made one")
    parser.add_argument("--child", nargs=2, metavar=("WAY", "CLIP"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], Path(args.child[1]), args.frames)
        return
    clip = args.clip or make_clip(args.minutes)
    if args.make_clip:
        return
    warm_page_cache(clip)
    made = "" if args.clip else f", {args.minutes:g} min {WIDTH}x{HEIGHT} h264 ultrafast, GOP {GOP}"
    print(f"clip: {clip} ({clip.stat().st_size / 1e6:.0f} MB{made}); sampling {args.frames} frames; "
          f"{os.cpu_count()} CPUs")
    results: dict[str, dict] = {}
    for way in args.ways.split(","):
        if way == "decord":
            try:
                import decord  # noqa: F401
            except ImportError:
                print("decord: not installed, skipped")
                continue
        best = None
        for _ in range(args.repeat):
            done = subprocess.run(
                [sys.executable, __file__, "--child", way, str(clip), "--frames", str(args.frames)],
                capture_output=True, text=True, check=False,
            )
            if done.returncode != 0:
                raise SystemExit(f"{way} failed:\n{done.stderr}")
            result = json.loads(done.stdout.strip().splitlines()[-1])
            if best is None or result["seconds"] < best["seconds"]:
                best = result
        results[way] = best

    reference = results.get("reference")
    print(f"\n{'way':<10} {'time (s)':>9} {'vs reference':>13} {'peak RSS (MB)':>14} "
          f"{'frames decoded':>15} {'seeks':>6}  pixels")
    for way, result in results.items():
        speedup = f"{reference['seconds'] / result['seconds']:.1f}x" if reference else "-"
        same_indices = reference is None or result["indices"] == reference["indices"]
        same_pixels = reference is None or result["digest"] == reference["digest"]
        check = "identical" if same_pixels else ("same indices" if same_indices else "DIFFERENT INDICES")
        if way == "reference":
            check = "-"
        decoded = "-" if result["decoded"] is None else str(result["decoded"])
        seeks = "-" if result["seeks"] is None else str(result["seeks"])
        print(f"{way:<10} {result['seconds']:>9.2f} {speedup:>13} {result['peak_rss_mb']:>14.0f} "
              f"{decoded:>15} {seeks:>6}  {check}")


if __name__ == "__main__":
    main()

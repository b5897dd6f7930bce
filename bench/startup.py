"""A whole `llava ask` process against the whole reference pipeline, side by side.

    python bench/startup.py                     # ov-mid (Qwen2-0.5B widths, 2.3 GB float32), 4 frames
    python bench/startup.py --repeat 5 --tokens 32 --frames 4
    python bench/startup.py --size tiny         # the tiny checkpoint: start-up cost alone

Each run is a fresh process, timed from its start to its exit (imports, loading, media,
prompt, generation, printing), with its peak RSS from wait4 (ru_maxrss of that process):

- ours: `llava ask --model FOLDER --frames N -n T --temperature 0 --json CLIP QUESTION`;
- reference: a Python process that imports transformers 4.48.3, `from_pretrained`s the
  model and processor, samples the same frames with PyAV (the model cards' recipe: decode,
  keep `np.arange(0, total, total / N)`), and `generate`s greedily with the same limit.

Runs alternate (ours, reference, ours, …) and the table gives medians. Both read the same
checkpoint from a warm page cache (each file is read once before the first run). The
"load" column is ours `timings.load_s` from --json against the reference's timed
`from_pretrained`. Both decode greedily, so the answers (and their lengths) must be equal:
the table says so.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

QUESTION = "Why is this funny?"

REFERENCE = r"""
import json, sys, time
folder, clip, frames, tokens, question = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
import av, numpy as np, torch, transformers
config = json.load(open(f"{folder}/config.json"))
onevision = config.get("model_type") == "llava_onevision"
model_class = (transformers.LlavaOnevisionForConditionalGeneration if onevision
               else transformers.LlavaNextVideoForConditionalGeneration)
processor_class = transformers.LlavaOnevisionProcessor if onevision else transformers.LlavaNextVideoProcessor
started = time.perf_counter()
model = model_class.from_pretrained(folder, torch_dtype=torch.float32).eval()
load_s = time.perf_counter() - started
processor = processor_class.from_pretrained(folder)
with av.open(clip) as container:
    decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
idx = np.arange(0, len(decoded), len(decoded) / frames).astype(int)
conversation = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}]
prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
inputs = processor(text=prompt, videos=[np.stack([decoded[i] for i in idx])], return_tensors="pt")
with torch.no_grad():
    out = model.generate(**inputs, max_new_tokens=tokens, do_sample=False)
new = out[:, inputs["input_ids"].shape[1]:]
answer = processor.batch_decode(new, skip_special_tokens=True)[0]
print(json.dumps({"answer": answer, "answer_tokens": int(new.shape[1]), "load_s": load_s}))
"""


def timed(cmd: list[str], env: dict) -> tuple[float, float, str, str]:
    """(wall s, peak RSS MB, stdout, stderr) of one process, start to exit."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    if proc.returncode != 0:
        tail = (stderr.strip().splitlines() or ["?"])[-1]
        raise SystemExit(f"{cmd[:3]} failed ({proc.returncode}): {tail}")
    return wall, usage.ru_maxrss / 1024, stdout, stderr


def warm(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with path.open("rb") as handle:
                while handle.read(1 << 24):
                    pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="ov-mid", help="a size from bench_ask.py's SIZES (default: ov-mid)")
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "llava-bench"))
    args = parser.parse_args()

    from bench_ask import make_checkpoint, make_clip

    root = Path(args.workdir)
    root.mkdir(parents=True, exist_ok=True)
    folder = make_checkpoint(args.size, root)
    clip = make_clip(root)
    warm(folder)
    config = root / "empty-config.toml"
    config.write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLAVA_")}
    env.update(NO_COLOR="1", LLAVA_CONFIG=str(config), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    ours_cmd = [sys.executable, "-m", "llava_cli", "ask", "--model", str(folder), "--frames", str(args.frames),
                "-n", str(args.tokens), "--temperature", "0", "--json", str(clip), QUESTION]
    ref_cmd = [sys.executable, "-c", REFERENCE, str(folder), str(clip), str(args.frames), str(args.tokens), QUESTION]

    rows: dict[str, list[dict]] = {"ours": [], "reference": []}
    for _ in range(args.repeat):
        for impl, cmd in (("ours", ours_cmd), ("reference", ref_cmd)):
            wall, rss, stdout, _ = timed(cmd, env)
            data = json.loads(stdout.strip().splitlines()[-1])
            load = data["timings"]["load_s"] if impl == "ours" else data["load_s"]
            rows[impl].append(dict(wall=wall, rss=rss, load=load, answer=data["answer"],
                                   tokens=data["answer_tokens"]))

    def med(impl: str, key: str) -> float:
        return statistics.median(r[key] for r in rows[impl])

    same = all(o["answer"] == r["answer"] for o, r in zip(rows["ours"], rows["reference"]))
    print(f"{args.size} ({folder.name}, {sum(p.stat().st_size for p in folder.glob('*.safetensors')) / 1e9:.2f} GB), "
          f"{args.frames} frames, {args.tokens} new tokens max, CPU threads {os.cpu_count()}, "
          f"median of {args.repeat} fresh processes each")
    header = ("impl", "whole process s", "peak RSS MB", "load s", "answer tokens", "runs (wall s)")
    print(" | ".join(header))
    print(" | ".join("---" for _ in header))
    for impl in ("ours", "reference"):
        walls = ", ".join(f"{r['wall']:.2f}" for r in rows[impl])
        print(f"{impl} | {med(impl, 'wall'):.2f} | {med(impl, 'rss'):.0f} | {med(impl, 'load'):.2f} | "
              f"{rows[impl][0]['tokens']} | {walls}")
    print(f"whole process: ours {med('reference', 'wall') / med('ours', 'wall'):.2f}x faster; "
          f"peak RSS ours - reference = {med('ours', 'rss') - med('reference', 'rss'):+.0f} MB; "
          f"answers identical: {'yes' if same else 'NO'}")


if __name__ == "__main__":
    main()

"""`llava batch` throughput by --parallel: the continuous-batching core against one at a time.

    python bench/batch_parallel.py                       # mid (~0.5B LM), 16 videos, 8 frames, 64 tokens
    python bench/batch_parallel.py --parallel-values 1,4,8,16 --inputs 32
    python bench/batch_parallel.py --size tiny --inputs 4 --parallel-values 1,4 --tokens 8   # smoke test
    python bench/batch_parallel.py --reference           # + transformers generate, padded static batches
    # GPU:
    python bench/batch_parallel.py --device cuda --dtype bfloat16 --size next-7b --frames 32

One run of this script makes (once, cached in --workdir) a random checkpoint of --size from
bench_ask.py's SIZES and --inputs distinct short videos (each its own size, length and
orientation, so every prompt differs), then, for each --parallel value, runs a whole
`python -m llava_cli batch --model CKPT --frames F -n T --temperature 0 --parallel N
--output OUT.jsonl INPUTS/ QUESTION` process, with LLAVA_CONFIG pointed at an empty file and
every other LLAVA_* variable removed, so no user setting leaks in.

Per --parallel value: the process's wall time (imports, loading, media, prompts, generation),
"after load" (the batch run's own time, from its closing "answered N of N in X s" line),
answers per minute and answer tokens per second over the wall time (tokens are summed from
the JSONL `answer_tokens`; the per-line `timings` overlap when answers run side by side, so
they are not summed), the peak RSS of the `llava batch` process (its own VmHWM, which it
writes at exit through a two-line wrapper, cross-checked by polling /proc/PID/status), and
the speed-up over --parallel 1 (the reference's: over its batch of 1). Greedy answers must not
depend on how many run together: "same answers" compares each (video, question)'s answer
with ours at --parallel 1, token id by token id (see OURS below: a random checkpoint's
answers are mostly empty text).

--reference adds transformers 4.48.3's `LlavaNextVideoForConditionalGeneration.generate`
(LlavaOnevision… for the ov-* sizes)
over the same videos and question (the model cards' frame sampling, greedy, the same token
limit) in padded static batches (left padding) of each --parallel size, timed the same way
(a whole process). Needs the test extra (transformers).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_ask  # noqa: E402 - SIZES, make_checkpoint (it puts tests/ on sys.path for support.*)

QUESTION = "What happens in this video?"

# `python -m llava_cli …` with two additions: at exit (SystemExit included) the process
# writes its own high-water RSS (VmHWM, kB) to $BATCH_BENCH_HWM; and each JSONL line gets
# the answer's token ids (`answer_ids`). A random checkpoint's answers are mostly ids its
# small trained tokenizer cannot spell (mid: a 32,064-row LM head, 402 tokenizer pieces),
# so their text is usually "" and comparing text alone would prove nothing. If the
# internals it hooks move, the lines simply have no ids and the text is compared.
OURS = r"""
import atexit, os, runpy, sys
def _hwm():
    try:
        kb = next(l.split()[1] for l in open("/proc/self/status") if l.startswith("VmHWM:"))
        with open(os.environ["BATCH_BENCH_HWM"], "w") as f:
            f.write(kb)
    except (OSError, StopIteration, KeyError):
        pass
atexit.register(_hwm)
try:
    import llava_cli.batch as _batch, llava_cli.scheduler as _scheduler
    _finish, _fill = _scheduler.Scheduler._finish, _batch._fill
    def _finish_ids(self, sequence, *args, **kwargs):
        _finish(self, sequence, *args, **kwargs)
        sequence.result.timings.token_ids = list(sequence.result.tokens)
    def _fill_ids(record, answer, timings, *args, **kwargs):
        _fill(record, answer, timings, *args, **kwargs)
        record["answer_ids"] = getattr(timings, "token_ids", None)
    _scheduler.Scheduler._finish, _batch._fill = _finish_ids, _fill_ids
except (ImportError, AttributeError):
    pass
runpy.run_module("llava_cli", run_name="__main__", alter_sys=True)
"""

REFERENCE = r"""
import json, os, sys, time
folder, inputs, frames, tokens, question, batch, device, dtype = sys.argv[1:9]
frames, tokens, batch = int(frames), int(tokens), int(batch)
import av, numpy as np, torch, transformers
torch_dtype = getattr(torch, dtype)
onevision = json.load(open(os.path.join(folder, "config.json"))).get("model_type") == "llava_onevision"
model_class = (transformers.LlavaOnevisionForConditionalGeneration if onevision
               else transformers.LlavaNextVideoForConditionalGeneration)
processor_class = transformers.LlavaOnevisionProcessor if onevision else transformers.LlavaNextVideoProcessor
model = model_class.from_pretrained(folder, torch_dtype=torch_dtype).eval().to(device)
processor = processor_class.from_pretrained(folder)
processor.tokenizer.padding_side = "left"
if processor.tokenizer.pad_token is None:  # the tiny checkpoints' tokenizer has none
    processor.tokenizer.pad_token = processor.tokenizer.unk_token or processor.tokenizer.eos_token
conversation = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}]
prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
paths = sorted(os.path.join(inputs, name) for name in os.listdir(inputs) if name.endswith(".mp4"))

def clip(path):
    # The model cards' recipe: decode the whole clip, keep uniformly spaced frames.
    with av.open(path) as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    idx = np.arange(0, len(decoded), len(decoded) / frames).astype(int)
    return np.stack([decoded[i] for i in idx])

started = time.perf_counter()
for begin in range(0, len(paths), batch):
    group = paths[begin:begin + batch]
    inputs_ = processor(text=[prompt] * len(group), videos=[clip(p) for p in group], padding=True,
                        return_tensors="pt")
    inputs_ = {k: (v.to(device, torch_dtype) if v.is_floating_point() else v.to(device)) for k, v in inputs_.items()}
    with torch.no_grad():
        out = model.generate(**inputs_, max_new_tokens=tokens, do_sample=False)
    new = out[:, inputs_["input_ids"].shape[1]:]
    eos = processor.tokenizer.eos_token_id
    for path, row in zip(group, new.tolist()):
        n = row.index(eos) if eos in row else len(row)  # after its EOS a row holds padding
        answer = processor.decode(row[:n], skip_special_tokens=True)
        print(json.dumps({"path": path, "question": question, "answer": answer, "answer_tokens": n,
                          "answer_ids": row[:n]}), flush=True)
print(json.dumps({"run_s": time.perf_counter() - started}), flush=True)
"""


def make_inputs(root: Path, count: int) -> Path:
    """``count`` distinct short videos (sizes, lengths, mirrorings all differ), made once."""
    from support.media import make_video

    folder = root / f"batch-inputs-{count}"
    done = folder / ".complete"
    if done.is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    widths, heights = (96, 128, 160, 192, 224), (72, 96, 120)
    for i in range(count):
        size = (widths[i % len(widths)] + 16 * (i // 15), heights[i % len(heights)])
        make_video(folder / f"clip-{i:03d}.mp4", frames=24 + 3 * i, size=size, fps=24,
                   hflip=bool(i & 1), vflip=bool(i & 2))
    done.write_text("")
    return folder


def clean_env(root: Path) -> dict[str, str]:
    config = root / "empty-config.toml"
    config.write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLAVA_")}
    env.update(NO_COLOR="1", LLAVA_CONFIG=str(config), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return env


def _vmhwm_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def timed(cmd: list[str], env: dict[str, str]) -> dict:
    """Run one process to its end: wall s, peak RSS MB (its VmHWM), stdout, stderr."""
    with tempfile.TemporaryDirectory() as tmp:
        hwm_file = Path(tmp) / "hwm"
        env = dict(env, BATCH_BENCH_HWM=str(hwm_file))
        out_path, err_path = Path(tmp) / "out", Path(tmp) / "err"
        with out_path.open("wb") as out, err_path.open("wb") as err:
            started = time.perf_counter()
            proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
            polled = [0]

            def poll() -> None:  # the fallback should the process not reach its atexit
                while proc.poll() is None:
                    polled[0] = max(polled[0], _vmhwm_kb(proc.pid))
                    time.sleep(0.2)

            watcher = threading.Thread(target=poll, daemon=True)
            watcher.start()
            code = proc.wait()
            wall = time.perf_counter() - started
            watcher.join()
        reported = int(hwm_file.read_text()) if hwm_file.is_file() and hwm_file.read_text().strip() else 0
        return dict(code=code, wall=wall, rss_mb=max(reported, polled[0]) / 1024,
                    stdout=out_path.read_text(errors="replace"), stderr=err_path.read_text(errors="replace"))


def _fail(what: str, run: dict) -> None:
    tail = (run["stderr"].strip().splitlines() or ["?"])[-1]
    print(f"# {what} failed (exit {run['code']}): {tail}", file=sys.stderr)


def run_ours(args, folder: Path, inputs: Path, env: dict, parallel: int, out_dir: Path) -> dict | None:
    output = out_dir / f"ours-parallel-{parallel}.jsonl"
    cmd = [sys.executable, "-c", OURS, "batch", "--model", str(folder), "--frames", str(args.frames),
           "--max-new-tokens", str(args.tokens), "--temperature", "0", "--device", args.device,
           "--dtype", args.dtype, "--parallel", str(parallel), "--output", str(output), "--overwrite",
           str(inputs), QUESTION]
    run = timed(cmd, env)
    if not output.is_file() or run["code"] not in (0, 3):
        _fail(f"llava batch --parallel {parallel}", run)
        return None
    lines = [json.loads(line) for line in output.read_text().splitlines() if line.strip()]
    match = re.search(r"answered \d+ of \d+(?: \(\d+ failed\))? in ([\d.]+) s", run["stderr"])
    return dict(run, lines=lines, run_s=float(match.group(1)) if match else None)


def run_reference(args, folder: Path, inputs: Path, env: dict, batch: int) -> dict | None:
    cmd = [sys.executable, "-c", REFERENCE, str(folder), str(inputs), str(args.frames), str(args.tokens), QUESTION,
           str(batch), args.device, args.dtype]
    run = timed(cmd, env)
    if run["code"] != 0:
        _fail(f"reference batch {batch}", run)
        return None
    records = [json.loads(line) for line in run["stdout"].splitlines() if line.startswith("{")]
    lines = [r for r in records if "path" in r]
    run_s = next((r["run_s"] for r in records if "run_s" in r), None)
    return dict(run, lines=lines, run_s=run_s)


def answers(lines: list[dict]) -> dict[tuple[str, str], object]:
    """(file name, question) → the answer's token ids where the line has them, else its text."""
    return {(os.path.basename(r["path"]), r["question"]):
            (tuple(r["answer_ids"]) if r.get("answer_ids") is not None else r.get("answer")) for r in lines}


def main() -> None:
    from llava_cli.config import DEFAULT_PARALLEL

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="mid", help=f"a size from bench_ask.py: {', '.join(bench_ask.SIZES)}")
    parser.add_argument("--inputs", type=int, default=16, help="distinct videos (one question each)")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=64, help="--max-new-tokens")
    parser.add_argument("--parallel-values", default=f"1,{DEFAULT_PARALLEL},16",
                        help=f"comma-separated --parallel values (default 1,{DEFAULT_PARALLEL} (the default),16)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None, help="default: float32 on CPU, bfloat16 on CUDA")
    parser.add_argument("--reference", action="store_true",
                        help="also time transformers generate in padded batches of the same sizes")
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "llava-bench"),
                        help="checkpoint and video cache (shared with bench_ask.py)")
    args = parser.parse_args()
    args.dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    values = list(dict.fromkeys(int(v) for v in args.parallel_values.split(",")))
    if 1 not in values:
        values.insert(0, 1)  # the baseline of the speed-up and the answer check

    root = Path(args.workdir)
    root.mkdir(parents=True, exist_ok=True)
    folder = bench_ask.make_checkpoint(args.size, root)
    inputs = make_inputs(root, args.inputs)
    env = clean_env(root)
    out_dir = root / "batch-outputs"
    out_dir.mkdir(exist_ok=True)

    rows: list[tuple[str, int, dict]] = []
    for parallel in values:
        result = run_ours(args, folder, inputs, env, parallel, out_dir)
        if result is not None:
            rows.append(("ours", parallel, result))
        print(f"# ours --parallel {parallel}: "
              + (f"{result['wall']:.1f} s" if result else "failed"), file=sys.stderr, flush=True)
    if args.reference:
        for batch in values:
            result = run_reference(args, folder, inputs, env, batch)
            if result is not None:
                rows.append(("reference", batch, result))
            print(f"# reference batch {batch}: "
                  + (f"{result['wall']:.1f} s" if result else "failed"), file=sys.stderr, flush=True)

    base = {impl: r for impl, p, r in rows if p == 1}
    baseline = answers(base["ours"]["lines"]) if "ours" in base else None
    print(f"{args.size} ({folder.name}), {args.inputs} videos x 1 question, {args.frames} frames, "
          f"max {args.tokens} new tokens, greedy, {args.device} {args.dtype}, {os.cpu_count()} CPUs, "
          f"DEFAULT_PARALLEL={DEFAULT_PARALLEL}")
    header = ("impl", "parallel", "wall s", "after load s", "answers/min", "answer tok/s", "answer tokens",
              "peak RSS MB", "speed-up vs 1 (wall / after load)", "errors", "same answers as ours --parallel 1")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    all_same = True
    for impl, parallel, r in rows:
        lines = r["lines"]
        answered = [line for line in lines if line.get("answer") is not None]
        tokens = sum(line.get("answer_tokens") or 0 for line in answered)
        errors = len(lines) - len(answered)
        first = base.get(impl)
        speed = f"{first['wall'] / r['wall']:.2f}x" if first else "–"
        if first and first.get("run_s") and r.get("run_s"):
            speed += f" / {first['run_s'] / r['run_s']:.2f}x"
        if baseline is None:
            same = "–"
        else:
            mine = answers(lines)
            equal = mine == baseline
            all_same &= equal or impl == "reference"
            differing = sum(1 for key in baseline if mine.get(key) != baseline[key])
            same = "yes" if equal else f"no ({differing} of {len(baseline)} differ)"
        after = f"{r['run_s']:.1f}" if r.get("run_s") else "–"
        print(f"| {impl} | {parallel} | {r['wall']:.1f} | {after} | {60 * len(answered) / r['wall']:.1f} | "
              f"{tokens / r['wall']:.1f} | {tokens} | {r['rss_mb']:.0f} | {speed} | {errors} | {same} |")
    ours_rows = [r for impl, _, r in rows if impl == "ours"]
    complete = len(ours_rows) == len(values) and baseline is not None
    first_lines = base["ours"]["lines"] if "ours" in base else []
    by_ids = bool(first_lines) and all(line.get("answer_ids") is not None for line in first_lines)
    empty = sum(1 for line in first_lines if line.get("answer") == "")
    print(f"same answers: {'yes' if complete and all_same else 'no'}"
          + ("" if complete else " (a run failed)")
          + (" (compared token by token" if by_ids else " (compared as text")
          + f"; {empty} of {len(first_lines)} answers decode to empty text)")


if __name__ == "__main__":
    main()

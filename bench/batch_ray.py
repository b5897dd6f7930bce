"""`llava batch --ray` throughput on this machine: the local batch against Ray with 1 and 2
model actors, the same inputs and options.

    python bench/batch_ray.py                              # mid (~0.5B LM), 16 videos, 8 frames, 32 tokens
    python bench/batch_ray.py --actors 1,2,4 --inputs 32
    python bench/batch_ray.py --size tiny --inputs 4 --tokens 8    # smoke test

Each row is one whole `python -m llava_cli batch …` process (imports, model load, media,
generation), with LLAVA_CONFIG pointed at an empty file and every other LLAVA_* variable
removed. The Ray rows start their own local Ray instance (`--ray` with no RAY_ADDRESS: what
a user on one machine gets), so their wall time includes Ray's start (about 3 s here) and
every actor's model load; "run s" is the command's own "answered N of N in X s" (for Ray:
from the pipeline's start, actor loads included). Peak RSS is the driver's only for the
Ray rows (the actors are other processes), so it is left out of the comparison.

"same answers": each (video, question)'s answer text and answer token count equal the local
batch's (a random checkpoint's answers are mostly empty text, see batch_parallel.py; the
token ids are not reachable inside Ray's actor processes, so the count stands in for them).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_ask  # noqa: E402
from batch_parallel import QUESTION, _fail, clean_env, make_inputs, timed  # noqa: E402


def run_batch(args, folder: Path, inputs: Path, env: dict, out: Path, extra: list[str]) -> dict | None:
    cmd = [sys.executable, "-m", "llava_cli", "batch", "--model", str(folder), "--frames", str(args.frames),
           "--max-new-tokens", str(args.tokens), "--temperature", "0", "--parallel", str(args.parallel),
           "--output", str(out), "--overwrite", *extra, str(inputs), QUESTION]
    run = timed(cmd, env)
    if not out.is_file() or run["code"] not in (0, 3):
        _fail(" ".join(["llava batch", *extra]) or "llava batch", run)
        return None
    lines = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    match = re.search(r"answered \d+ of \d+(?: \(\d+ failed\))? in ([\d.]+) s", run["stderr"])
    return dict(run, lines=lines, run_s=float(match.group(1)) if match else None)


def answers(lines: list[dict]) -> dict:
    return {(os.path.basename(r["path"]), r["question"]): (r["answer"], r["answer_tokens"]) for r in lines}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="mid", help=f"a size from bench_ask.py: {', '.join(bench_ask.SIZES)}")
    parser.add_argument("--inputs", type=int, default=16, help="distinct videos (one question each)")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=32, help="--max-new-tokens")
    parser.add_argument("--parallel", type=int, default=8, help="--parallel of every run (each actor's slots)")
    parser.add_argument("--actors", default="1,2", help="--ray-actors values, comma-separated")
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "llava-bench"))
    args = parser.parse_args()

    root = Path(args.workdir)
    root.mkdir(parents=True, exist_ok=True)
    folder = bench_ask.make_checkpoint(args.size, root)
    inputs = make_inputs(root, args.inputs)
    env = clean_env(root)
    env.pop("RAY_ADDRESS", None)
    out_dir = root / "batch-ray-out"
    out_dir.mkdir(exist_ok=True)

    rows = [("local (no Ray)", run_batch(args, folder, inputs, env, out_dir / "local.jsonl", []))]
    for actors in [int(a) for a in args.actors.split(",")]:
        rows.append((f"--ray --ray-actors {actors}",
                     run_batch(args, folder, inputs, env, out_dir / f"ray-{actors}.jsonl",
                               ["--ray", "--ray-actors", str(actors)])))
    base = rows[0][1]
    print(f"\n`llava batch` on this machine ({os.cpu_count()} CPUs), size {args.size}, {args.inputs} videos, "
          f"{args.frames} frames, {args.tokens} tokens, --parallel {args.parallel}\n")
    print("| run | wall s | run s | answers/min (wall) | speed-up vs local | same answers |")
    print("|---|---|---|---|---|---|")
    for name, run in rows:
        if run is None:
            print(f"| {name} | failed | | | | |")
            continue
        count = len(run["lines"])
        per_min = 60 * count / run["wall"]
        speed = base["wall"] / run["wall"] if base else float("nan")
        same = "yes" if base and answers(run["lines"]) == answers(base["lines"]) else "NO"
        run_s = f"{run['run_s']:.1f}" if run["run_s"] is not None else "?"
        print(f"| {name} | {run['wall']:.1f} | {run_s} | {per_min:.1f} | {speed:.2f}x | {same} |")


if __name__ == "__main__":
    main()

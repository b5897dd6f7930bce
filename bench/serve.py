"""`llava serve`: what a resident model buys, the second question's latency and throughput
under concurrent clients.

    python bench/serve.py                                  # mid (~0.5B LM), 8 frames, 32 tokens, 16 clients
    python bench/serve.py --size tiny --inputs 4 --parallel-values 1,4 --tokens 8   # smoke test
    # GPU:
    python bench/serve.py --device cuda --dtype bfloat16 --size next-7b --frames 32

One run makes (once, cached in --workdir, shared with bench_ask.py and batch_parallel.py) a
random checkpoint of --size from bench_ask.py's SIZES, bench_ask's clip and --inputs distinct
short videos (batch_parallel.py's), and prints one markdown table in two parts. Every process
runs with LLAVA_CONFIG pointed at an empty file and every other LLAVA_* variable removed
(batch_parallel.clean_env); every answer is greedy (--temperature 0) with --frames and
--tokens as its frame count and token limit.

1. Second-question latency (rows "latency"):
   a. a fresh `python -m llava_cli ask -m CKPT clip.mp4 Q2` process: its wall time to exit
      and the time to its first stdout byte (the checkpoint's files are read once before,
      so the page cache does not favour the server);
   then `llava serve -m CKPT --port 0` starts (its start-up time: until its "serving … at"
   line), and `llava ask` with LLAVA_HOST asks it a first question about the same clip
   (the warm-up: it loads, decodes and encodes the clip);
   b. `llava ask` with LLAVA_HOST asks the second question Q2 (the clip is sent again as a
      data: URL; the server's media caches hold it): wall and first stdout byte;
   c. the same request (the same data: URL) as raw HTTP, streamed: the first SSE chunk with
      answer text, and the `data: [DONE]` (total).
   "same answers" compares (b) and (c)'s text with (a)'s.
2. Throughput under --inputs concurrent clients (rows "throughput"): for each of
   --parallel-values (1 always first: the baseline), a server with that --parallel (the
   default value runs without the flag) and --allowed-media-path over the work folder, one
   warm-up request (bench_ask's clip, 2 tokens), then --inputs client threads released
   together, each POSTing one non-streamed request about its own video (a file:// URL),
   max_tokens = --tokens. Per value: wall time for all of them, requests per minute,
   speed-up vs --parallel 1, /health's max_batch and decode steps (the run's own, the
   warm-up's subtracted), the server's peak RSS (its VmHWM) and whether every answer (text
   and completion-token count) is the one --parallel 1 gave.

A random checkpoint's answers are often token ids its tiny tokenizer cannot spell (empty
text: then the first stdout byte is the closing newline, and no SSE chunk carries text); the
line under the table says how many were empty. Each server is stopped with SIGINT (then
waited for) after its part, also on errors; its stderr is kept in WORKDIR/serve-logs/.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests" / "server"))

import batch_parallel  # noqa: E402 - make_inputs, clean_env, _vmhwm_kb, QUESTION
import bench_ask  # noqa: E402 - SIZES, make_checkpoint, make_clip (puts tests/ on sys.path)
from serve_helpers import Server, start_server  # noqa: E402 - `llava serve --port 0`, its address, SIGINT stop

LLAVA = [sys.executable, "-m", "llava_cli"]
QUESTION_1 = "What happens in this video?"
QUESTION_2 = "What is shown at the end of the video?"
START_TIMEOUT_S = 900  # a large checkpoint on a slow disk
REQUEST_TIMEOUT_S = 3600


def sampling_args(args) -> list[str]:
    return ["--frames", str(args.frames), "--max-new-tokens", str(args.tokens), "--temperature", "0"]


def model_args(args, folder: Path) -> list[str]:
    return ["--model", str(folder), "--device", args.device, "--dtype", args.dtype]


def read_through(folder: Path) -> None:
    """Read the checkpoint's files once, so the first process to load it is not the only one
    paying for the disk."""
    for path in folder.iterdir():
        if path.is_file():
            with path.open("rb") as handle:
                while handle.read(1 << 24):
                    pass


def timed_process(cmd: list[str], env: dict[str, str]) -> dict:
    """Run a process to its end: wall s, seconds to its first stdout byte, stdout, stderr, code."""
    with tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL, env=env)
        first = None
        chunks = []
        while True:
            data = os.read(proc.stdout.fileno(), 65536)
            if not data:
                break
            if first is None:
                first = time.perf_counter() - started
            chunks.append(data)
        code = proc.wait()
        wall = time.perf_counter() - started
        proc.stdout.close()
        err.seek(0)
        stderr = err.read().decode(errors="replace")
    stdout = b"".join(chunks).decode(errors="replace")
    return dict(code=code, wall=wall, first=first, text=stdout.rstrip("\n"), stdout=stdout, stderr=stderr)


def _last_line(text: str) -> str:
    return (text.strip().splitlines() or ["?"])[-1]


def health(server: Server) -> dict:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        connection.request("GET", "/health")
        return json.loads(connection.getresponse().read())
    finally:
        connection.close()


def chat(server: Server, body: dict) -> dict:
    """One POST /v1/chat/completions; streamed bodies are read event by event. Returns
    total s, first s (streamed: the first chunk with answer text), text, tokens, error."""
    started = time.perf_counter()
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=REQUEST_TIMEOUT_S)
    result = dict(first=None, text="", tokens=None, error=None)
    try:
        connection.request("POST", "/v1/chat/completions", body=json.dumps(body).encode(),
                           headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        if response.status != 200:
            result["error"] = f"HTTP {response.status}: {response.read()[:300]!r}"
        elif not body.get("stream"):
            reply = json.loads(response.read())
            result.update(text=reply["choices"][0]["message"]["content"],
                          tokens=reply["usage"]["completion_tokens"])
        else:
            pieces = []
            for raw in response:
                line = raw.decode().rstrip("\r\n")
                if not line.startswith("data: "):
                    continue
                data = line[len("data: "):]
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    result["error"] = chunk["error"].get("message")
                    break
                for choice in chunk.get("choices") or []:
                    piece = (choice.get("delta") or {}).get("content")
                    if piece:
                        if result["first"] is None:
                            result["first"] = time.perf_counter() - started
                        pieces.append(piece)
                if chunk.get("usage"):
                    result["tokens"] = chunk["usage"]["completion_tokens"]
            result["text"] = "".join(pieces)
    except (OSError, http.client.HTTPException, ValueError, KeyError) as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        connection.close()
    result["total"] = time.perf_counter() - started
    return result


def video_body(url: str, question: str, args, *, stream: bool, tokens: int | None = None) -> dict:
    body = {"model": "llava", "stream": stream, "max_tokens": tokens or args.tokens, "temperature": 0,
            "messages": [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": url}},
                                                      {"type": "text", "text": question}]}],
            "llava": {"frames": args.frames}}
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


def launch(args, folder: Path, env: dict, root: Path, tag: str, extra: list[str]) -> tuple[Server, float]:
    logs = root / "serve-logs" / tag
    logs.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    server = start_server([*model_args(args, folder), *sampling_args(args), "--keep-alive=-1", *extra], env, logs,
                          timeout=START_TIMEOUT_S)
    return server, time.perf_counter() - started


def stop(server: Server | None) -> None:
    """SIGINT, then wait (serve_helpers: a kill after 30 s, reported here)."""
    if server is None:
        return
    try:
        server.stop()
    except AssertionError as exc:
        print(f"# {str(exc).splitlines()[0]} (killed)", file=sys.stderr)


def row(part: str, run: str, *, first=None, total=None, rpm=None, speed=None, max_batch=None, steps=None,
        rss=None, same="–", notes="") -> tuple:
    def number(value, digits=2):
        return "–" if value is None else f"{value:.{digits}f}"

    return (part, run, number(first), number(total), number(rpm, 1), speed or "–",
            "–" if max_batch is None else str(max_batch), "–" if steps is None else str(steps),
            number(rss, 0), same, notes)


def _answer_note(text: str, tokens) -> str:
    shown = text if len(text) <= 24 else text[:21] + "…"
    shown = json.dumps(shown, ensure_ascii=False)
    return (f"{tokens} tokens, " if tokens is not None else "") + (shown if text else "empty text")


def latency_part(args, folder: Path, clip: Path, env: dict, root: Path, rows: list, empties: list) -> None:
    print("# latency: a fresh `llava ask` process", file=sys.stderr, flush=True)
    read_through(folder)
    fresh = timed_process([*LLAVA, "ask", *model_args(args, folder), *sampling_args(args), str(clip), QUESTION_2],
                          env)
    if fresh["code"] != 0:
        print(f"# fresh llava ask failed (exit {fresh['code']}): {_last_line(fresh['stderr'])}", file=sys.stderr)
        rows.append(row("latency", "(a) fresh `llava ask` process, Q2", notes=f"failed: exit {fresh['code']}"))
        baseline = None
    else:
        baseline = fresh["text"]
        empties.append(fresh["text"] == "")
        rows.append(row("latency", "(a) fresh `llava ask` process, Q2", first=fresh["first"], total=fresh["wall"],
                        notes="first = first stdout byte; " + _answer_note(fresh["text"], None)))

    print("# latency: `llava serve` and `llava ask` with LLAVA_HOST", file=sys.stderr, flush=True)
    server = None
    try:
        server, start_s = launch(args, folder, env, root, "latency", [])
        rows.append(row("latency", "`llava serve` start-up (to its 'serving' line)", total=start_s))
        host_env = dict(env, LLAVA_HOST=f"127.0.0.1:{server.port}")
        client = [*LLAVA, "ask", *sampling_args(args), str(clip)]
        for label, question in (("warm-up: `llava ask` + LLAVA_HOST, Q1", QUESTION_1),
                                ("(b) `llava ask` + LLAVA_HOST, Q2", QUESTION_2)):
            run = timed_process([*client, question], host_env)
            if run["code"] != 0:
                print(f"# {label} failed (exit {run['code']}): {_last_line(run['stderr'])}", file=sys.stderr)
                rows.append(row("latency", label, notes=f"failed: exit {run['code']}"))
                continue
            same = "–" if baseline is None or question != QUESTION_2 else ("yes" if run["text"] == baseline else "no")
            if question == QUESTION_2:
                empties.append(run["text"] == "")
            rows.append(row("latency", label, first=run["first"], total=run["wall"], same=same,
                            notes="first = first stdout byte; " + _answer_note(run["text"], None)))
        from llava_cli.client import media_part  # the data: URL `llava ask` sends

        url = media_part(str(clip))[0]["video_url"]["url"]
        streamed = chat(server, video_body(url, QUESTION_2, args, stream=True))
        if streamed["error"]:
            rows.append(row("latency", "(c) raw HTTP, streamed, Q2", notes=f"failed: {streamed['error']}"))
        else:
            empties.append(streamed["text"] == "")
            same = "–" if baseline is None else ("yes" if streamed["text"] == baseline else "no")
            rows.append(row("latency", "(c) raw HTTP, streamed, Q2", first=streamed["first"], total=streamed["total"],
                            same=same, notes="first = first SSE chunk with text; total = [DONE]; "
                            + _answer_note(streamed["text"], streamed["tokens"])))
        counters = health(server)["counters"]
        rows.append(row("latency", "(server after b, c)", max_batch=counters["max_batch"],
                        steps=counters["decode_steps"], rss=batch_parallel._vmhwm_kb(server.proc.pid) / 1024,
                        notes=f"{counters['requests']} requests, media decoded {counters['media_decoded']}, "
                              f"encoded {counters['media_encoded']}"))
    except AssertionError as exc:  # serve_helpers: the server did not start
        print(f"# {_last_line(str(exc))}", file=sys.stderr)
        rows.append(row("latency", "`llava serve` start-up", notes="failed: " + _last_line(str(exc))))
    finally:
        stop(server)


def throughput_run(args, folder: Path, clip: Path, videos: list[Path], env: dict, root: Path,
                   parallel: int, default: int) -> dict | None:
    extra = [] if parallel == default else ["--parallel", str(parallel)]
    server = None
    try:
        server, _ = launch(args, folder, env, root, f"parallel-{parallel}", ["--allowed-media-path", str(root), *extra])
        warm = chat(server, video_body(clip.resolve().as_uri(), QUESTION_1, args, stream=False, tokens=2))
        if warm["error"]:
            print(f"# --parallel {parallel}: the warm-up failed: {warm['error']}", file=sys.stderr)
        before = health(server)["counters"]
        results: list[dict | None] = [None] * len(videos)
        gate = threading.Barrier(len(videos) + 1)

        def client(i: int) -> None:
            body = video_body(videos[i].resolve().as_uri(), batch_parallel.QUESTION, args, stream=False)
            gate.wait()
            results[i] = chat(server, body)

        threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(len(videos))]
        for thread in threads:
            thread.start()
        gate.wait()
        started = time.perf_counter()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - started
        after = health(server)["counters"]
        return dict(wall=wall, results=results, max_batch=after["max_batch"],
                    steps=after["decode_steps"] - before["decode_steps"],
                    rss=batch_parallel._vmhwm_kb(server.proc.pid) / 1024)
    except AssertionError as exc:
        print(f"# --parallel {parallel}: {_last_line(str(exc))}", file=sys.stderr)
        return None
    finally:
        stop(server)


def throughput_part(args, folder: Path, clip: Path, env: dict, root: Path, rows: list, empties: list) -> bool:
    from llava_cli.config import DEFAULT_PARALLEL

    values = list(dict.fromkeys(int(v) for v in args.parallel_values.split(",")))
    if 1 not in values:
        values.insert(0, 1)
    values.sort(key=lambda v: v != 1)  # the baseline first
    videos = sorted(batch_parallel.make_inputs(root, args.inputs).glob("*.mp4"))[:args.inputs]
    base = None
    all_same = True
    for parallel in values:
        print(f"# throughput: --parallel {parallel}", file=sys.stderr, flush=True)
        label = f"{len(videos)} clients, --parallel {parallel}" + (" (default)" if parallel == DEFAULT_PARALLEL else "")
        run = throughput_run(args, folder, clip, videos, env, root, parallel, DEFAULT_PARALLEL)
        if run is None:
            rows.append(row("throughput", label, notes="failed: the server did not start"))
            all_same = False
            continue
        results = run["results"]
        answers = [None if r is None or r["error"] else (r["text"], r["tokens"]) for r in results]
        errors = [r["error"] if r else "no result" for r in results if r is None or r["error"]]
        done = len(results) - len(errors)
        tokens = sum(a[1] or 0 for a in answers if a)
        if parallel == 1:
            base = run | {"answers": answers}
            empties.extend(a[0] == "" for a in answers if a)
        if base is None:
            same = "–"
        else:
            differing = sum(1 for mine, theirs in zip(answers, base["answers"]) if mine is None or mine != theirs)
            same = "yes" if differing == 0 else f"no ({differing} of {len(answers)} differ)"
            all_same &= differing == 0
        latencies = [r["total"] for r in results if r and not r["error"]]
        notes = (f"{tokens} answer tokens, {tokens / run['wall']:.1f} tok/s"
                 + (f", request median {statistics.median(latencies):.1f} s, max {max(latencies):.1f} s"
                    if latencies else "")
                 + (f"; {len(errors)} errors: {errors[0]}" if errors else ""))
        rows.append(row("throughput", label, total=run["wall"], rpm=60 * done / run["wall"],
                        speed=f"{base['wall'] / run['wall']:.2f}x" if base else None, max_batch=run["max_batch"],
                        steps=run["steps"], rss=run["rss"], same=same, notes=notes))
    return all_same and base is not None


def main() -> None:
    from llava_cli.config import DEFAULT_PARALLEL

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="mid", help=f"a size from bench_ask.py: {', '.join(bench_ask.SIZES)}")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=32, help="--max-new-tokens / max_tokens")
    parser.add_argument("--inputs", type=int, default=16, help="concurrent clients, one distinct video each")
    parser.add_argument("--parallel-values", default=f"1,{DEFAULT_PARALLEL},16",
                        help=f"comma-separated server --parallel values (default 1,{DEFAULT_PARALLEL} (the default),"
                             "16)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None, help="default: float32 on CPU, bfloat16 on CUDA")
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "llava-bench"),
                        help="checkpoint and video cache (shared with bench_ask.py)")
    args = parser.parse_args()
    args.dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")

    root = Path(args.workdir)
    root.mkdir(parents=True, exist_ok=True)
    folder = bench_ask.make_checkpoint(args.size, root)
    clip = bench_ask.make_clip(root)
    env = batch_parallel.clean_env(root)

    rows: list[tuple] = []
    latency_empty: list[bool] = []
    throughput_empty: list[bool] = []
    latency_part(args, folder, clip, env, root, rows, latency_empty)
    same = throughput_part(args, folder, clip, env, root, rows, throughput_empty)

    print(f"{args.size} ({folder.name}), {args.frames} frames, max {args.tokens} new tokens, greedy, "
          f"{args.device} {args.dtype}, {os.cpu_count()} CPUs, DEFAULT_PARALLEL={DEFAULT_PARALLEL}, "
          f"{args.inputs} clients")
    header = ("part", "run", "first output s", "total s", "requests/min", "speed-up vs --parallel 1",
              "/health max_batch", "decode steps", "server peak RSS MB", "same answers", "notes")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for cells in rows:
        print("| " + " | ".join(" ".join(cell.replace("|", "\\|").split()) for cell in cells) + " |")
    print(f"throughput answers the same at every --parallel: {'yes' if same else 'no'} (text and token count; "
          f"{sum(throughput_empty)} of {len(throughput_empty)} --parallel 1 answers and {sum(latency_empty)} of "
          f"{len(latency_empty)} Q2 answers are empty text)")


if __name__ == "__main__":
    main()

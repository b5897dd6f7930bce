#!/usr/bin/env bash
# The GPU checks, in one go: what a session lent a CUDA GPU (an H200) runs first.
#
#     bash bench/gpu_check.sh                 # from the repo root; about 8 minutes at most
#     GPU_CHECK_DRY=1 bash bench/gpu_check.sh # no GPU: the same code paths on the CPU, tiny widths
#
# Parts, each under its own `timeout` and inside one overall budget (GPU_CHECK_BUDGET
# seconds, default 470), so a stuck part costs its own slot, never the others':
#   1. preflight: a Python whose torch sees CUDA (else ONE clear line and exit 2: $PYTHON,
#      python, python3, .venv/bin/python are tried); llava_cli importable (else from the tree
#      through PYTHONPATH, else `pip install -e . --no-deps`; else one clear line, exit 2);
#   2. `pytest -m gpu -q` (the tests marked gpu);
#   3. 7B widths in bf16 (Vicuna-7B: hidden 4096, 32 layers, 32 heads, MLP 11008, vocab
#      32064), random weights built on the GPU, no checkpoint on disk: decode tokens/s through
#      the generation core (llava_cli.scheduler.Scheduler) with 1, 8 and 16 sequences of a
#      4,700-position prompt (a 32-frame LLaVA-NeXT-Video prompt), and the speed-up of the
#      batched decode step; prefill of that prompt with SDPA and with FlashAttention-2 (when
#      flash_attn imports), and how far their logits differ;
#   4. bench/bench_ask.py on the mid checkpoint (built once in /tmp/llava-bench): plain
#      (ours and the reference), 4bit (when bitsandbytes imports: peak GPU memory against
#      plain), compile (the decode step under torch.compile, CUDA graphs);
#   5. with the time left: the compiled decode step at 7B widths, 1/16/8 sequences.
# The last thing printed is one markdown table, a row per result or "skipped/failed: why".
# Every part's full output is kept in the log folder named above the table ($OUT when set).
#
# GPU_CHECK_DRY=1: CPU, float32, tiny widths, a 300-position prompt, bench_ask's tiny size;
# pytest is skipped (it would only skip its gpu tests). It proves the script's code paths.
set -u -o pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 2
DRY=${GPU_CHECK_DRY:-0}
START=$(date +%s)
BUDGET=${GPU_CHECK_BUDGET:-470}
DEADLINE=$((START + BUDGET))
RESERVE=5 # seconds kept for the table
if [ -n "${OUT:-}" ] && [ -d "${OUT:-}" ]; then LOG="$OUT/gpu_check"; else LOG=$(mktemp -d /tmp/gpu_check.XXXXXX); fi
mkdir -p "$LOG"
ROWS="$LOG/rows.tsv"
: >"$ROWS"
export GPU_CHECK_DRY=$DRY PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 NO_COLOR=1

row() { printf '%s\t%s\n' "$1" "$(printf '%s' "$2" | tr '\t\n|' '  /')" >>"$ROWS"; }

print_table() {
    echo
    echo "gpu_check: $(($(date +%s) - START)) s of a $BUDGET s budget; logs in $LOG"
    echo "| part | result |"
    echo "|---|---|"
    while IFS=$'\t' read -r name result; do
        printf '| %s | %s |\n' "$name" "$result"
    done <"$ROWS"
}

# Run one part: run_part NAME SECONDS COMMAND...; its output goes to $LOG/NAME.log. The
# part gets SECONDS, or what is left of the budget if that is less; 124 = timed out.
run_part() {
    local name=$1 want=$2
    shift 2
    local left=$((DEADLINE - $(date +%s) - RESERVE))
    if ((left < 15)); then
        echo "== $name: skipped, out of time" >&2
        return 125
    fi
    local limit=$((want < left ? want : left))
    echo "== $name (up to ${limit} s)" >&2
    local began=$(date +%s)
    timeout -k 5 "$limit" "$@" >"$LOG/$name.log" 2>&1
    local code=$?
    echo "   exit $code after $(($(date +%s) - began)) s" >&2
    return $code
}

last_line() { grep -v '^\s*$' "$LOG/$1.log" 2>/dev/null | tail -n 1 | cut -c1-200; }

why() { # a failed part's reason, for its row
    case $1 in
        124 | 137) echo "failed: timed out" ;;
        125) echo "skipped: out of time (${BUDGET} s budget)" ;;
        *) echo "failed (exit $1): $(last_line "$2")" ;;
    esac
}

# Rows printed by the inline Python ("ROW<tab>name<tab>result") into the table.
take_rows() { grep -a $'^ROW\t' "$LOG/$1.log" 2>/dev/null | cut -f2- >>"$ROWS"; }

# -- 1. preflight ----------------------------------------------------------------------
PY=""
for candidate in ${PYTHON:-} python python3 .venv/bin/python; do
    command -v "$candidate" >/dev/null 2>&1 || continue
    if [ "$DRY" = 1 ]; then
        "$candidate" -c 'import torch' >/dev/null 2>&1 && { PY=$candidate; break; }
    elif [ "$(timeout 60 "$candidate" -c 'import torch; print(torch.cuda.is_available())' 2>/dev/null)" = True ]; then
        PY=$candidate
        break
    fi
done
if [ -z "$PY" ]; then
    if [ "$DRY" = 1 ]; then
        echo "gpu_check: FAILED: no Python here imports torch"
    else
        echo "gpu_check: FAILED: no CUDA: torch.cuda.is_available() is False (or torch is missing) for" \
            "${PYTHON:-python, python3, .venv/bin/python}; nothing to check on this machine"
    fi
    exit 2
fi
if ! "$PY" -c 'import llava_cli' >/dev/null 2>&1; then
    # Not installed: the package straight from the tree (instant, and what an editable
    # install amounts to), else `pip install -e . --no-deps` (no network may be needed).
    export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
    if ! "$PY" -c 'import llava_cli' >/dev/null 2>&1; then
        timeout 60 "$PY" -m pip install -q -e . --no-deps >"$LOG/pip.log" 2>&1 ||
            timeout 60 "$PY" -m pip install -q -e . --no-deps --no-build-isolation >>"$LOG/pip.log" 2>&1
    fi
fi
if ! "$PY" -c 'import llava_cli.scheduler' >"$LOG/import.log" 2>&1; then
    echo "gpu_check: FAILED: llava_cli does not import with $PY: $(tail -n 1 "$LOG/import.log")"
    exit 2
fi
has() { "$PY" -c "import $1" >/dev/null 2>&1; }
if [ "$DRY" = 1 ]; then
    row "machine" "DRY RUN on the CPU (GPU_CHECK_DRY=1): tiny widths, not a measurement; $($PY -c 'import torch; print("torch", torch.__version__)')"
else
    row "machine" "$("$PY" -c 'import torch; p = torch.cuda.get_device_properties(0); print(f"{p.name}, {p.total_memory / 2**30:.0f} GiB, torch {torch.__version__}, CUDA {torch.version.cuda}")' 2>&1 | tail -n 1)"
fi
BNB=0
has bitsandbytes && BNB=1
HAS_TRANSFORMERS=0
has transformers && HAS_TRANSFORMERS=1

# -- 2. the tests marked gpu -------------------------------------------------------------
if [ "$DRY" = 1 ]; then
    row "pytest -m gpu" "skipped: dry run (no GPU: every gpu test would skip)"
elif ! has pytest; then
    row "pytest -m gpu" "skipped: pytest is not installed (pip install -e '.[test]')"
else
    run_part pytest_gpu 150 "$PY" -m pytest -m gpu -q -p no:cacheprovider tests
    code=$?
    summary=$(grep -aE '[0-9]+ (passed|failed|skipped|error)|no tests ran' "$LOG/pytest_gpu.log" | tail -n 1)
    case $code in
        0) row "pytest -m gpu" "$summary" ;;
        1) row "pytest -m gpu" "FAILED: $summary; $(grep -a '^FAILED' "$LOG/pytest_gpu.log" | head -n 3 | tr '\n' ' ')" ;;
        5) row "pytest -m gpu" "no tests ran: $summary" ;;
        *) row "pytest -m gpu" "$(why $code pytest_gpu)${summary:+; $summary}" ;;
    esac
fi

# -- 3. 7B widths, random weights: batched decode, prefill SDPA vs flash -----------------
cat >"$LOG/decode_7b.py" <<'PYEOF'
"""Decode through the generation core at Vicuna-7B widths, random weights on the device."""
import math
import os
import sys
import time

import torch

from llava_cli.generate import Sampling
from llava_cli.nn.attention import flash_available
from llava_cli.nn.config import TextConfig
from llava_cli.nn.text import TextModel
from llava_cli.scheduler import Request, Scheduler

DRY = os.environ.get("GPU_CHECK_DRY") == "1"
PART = sys.argv[1]  # "decode" (SDPA decode at 1/8/16, prefill SDPA vs flash) | "compile"
device = torch.device("cpu" if DRY else "cuda")
dtype = torch.float32 if DRY else torch.bfloat16
hidden, layers, heads, inter, vocab = (64, 2, 4, 128, 320) if DRY else (4096, 32, 32, 11008, 32064)
WIDTH = "tiny" if DRY else "7B"
PROMPT = int(os.environ.get("GPU_CHECK_PROMPT") or (300 if DRY else 4700))
CHUNK = 1024 if not DRY else 128  # the engine's default prefill chunk (tiny: several chunks too)
WARM, STEPS = (2, 8) if DRY else (4, 32)
default_batches = "1,16,8" if PART == "compile" else "1,8,16"
BATCHES = [int(b) for b in (os.environ.get("GPU_CHECK_BATCHES") or default_batches).split(",")]


def emit(name: str, result: str) -> None:
    print(f"ROW\t{name}\t{result}", flush=True)


def sync() -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_gib() -> str:
    return f", peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if device.type == "cuda" else ""


cfg = TextConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_layers=layers, num_heads=heads,
                 num_kv_heads=heads, head_dim=hidden // heads, rms_norm_eps=1e-5, rope_theta=10000.0,
                 max_position_embeddings=8192)
began = time.perf_counter()
torch.manual_seed(0)
torch.set_default_dtype(dtype)
with torch.device(device):
    model = TextModel(cfg)
torch.set_default_dtype(torch.float32)
with torch.no_grad():
    for param in model.parameters():
        if param.dim() == 2:  # embeddings (left uninitialised by TextModel) and linears
            param.normal_(0.0, 0.02)
model.requires_grad_(False)
model.rotary.reset(device)
model.prefill_chunk = CHUNK
sync()
weights = sum(p.numel() * p.element_size() for p in model.parameters())
print(f"built {WIDTH} text model ({weights / 2**30:.2f} GiB) in {time.perf_counter() - began:.1f} s", flush=True)


def prompt(seed: int) -> torch.Tensor:
    ids = torch.randint(0, vocab, (PROMPT,), generator=torch.Generator().manual_seed(seed)).to(device)
    with torch.inference_mode():
        return model.embed(ids)  # (PROMPT, hidden)


def run_batch(n: int) -> dict:
    """n sequences of a PROMPT-position prompt in one Scheduler; times STEPS decode steps
    once every sequence is decoding."""
    model.drop_cache()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    core = Scheduler(model, slots=n)
    # While the prompts prefill (one chunk per step) the first ones already decode.
    limit = n * math.ceil(PROMPT / CHUNK) + WARM + STEPS + 4
    started = time.perf_counter()
    generations = [core.submit(Request(embeds=prompt(i), sampling=Sampling(max_new_tokens=limit),
                                       stop_ids=frozenset(), context=PROMPT + limit)) for i in range(n)]
    while core.waiting or core.prefilling:
        core.step()
    sync()
    prefill_s = time.perf_counter() - started
    for _ in range(WARM):
        core.step()
    sync()
    t0 = time.perf_counter()
    for _ in range(STEPS):
        core.step()
    sync()
    elapsed = time.perf_counter() - t0
    errors = [g.result.error for g in generations if g.result.error]
    if errors or len(core.decoding) != n:
        raise RuntimeError(f"{len(errors)} sequence(s) failed: {errors[:1]}; {len(core.decoding)} of {n} decoding")
    for generation in generations:
        core.cancel(generation)
    return dict(tps=n * STEPS / elapsed, step_ms=1000 * elapsed / STEPS, prefill_s=prefill_s,
                total_s=time.perf_counter() - started, peak=peak_gib())


if PART == "compile":
    model.compile_decode()
label = "compiled decode" if PART == "compile" else "decode (sdpa)"
base = None
for n in BATCHES:
    try:
        r = run_batch(n)
    except Exception as exc:  # noqa: BLE001 - one row says why
        emit(f"{WIDTH} {label}, {n} seq", f"failed: {exc.__class__.__name__}: {str(exc).splitlines()[0][:160]}")
        continue
    if n == 1:
        base = r["tps"]
    speedup = f" = {r['tps'] / base:.1f}x 1 seq" if base and n != 1 else ""
    extra = f" (run incl. compile {r['total_s']:.0f} s)" if PART == "compile" else ""
    emit(f"{WIDTH} {label}, {n} seq x {PROMPT}-pos prompt",
         f"{r['tps']:.1f} tok/s ({r['step_ms']:.1f} ms/step){speedup}{r['peak']}{extra}")

if PART == "decode":
    backends = ["sdpa"]
    why = flash_available(device, dtype)
    if why is None:
        backends.append("flash")
    logits = {}
    for backend in backends:
        model.attn_backend = backend
        model.drop_cache()
        model.setup_cache(PROMPT + 8, 1)
        embeds = prompt(0)[None]
        with torch.inference_mode():
            model.prefill(embeds, row=0)  # warm-up
            sync()
            t0 = time.perf_counter()
            logits[backend] = model.prefill(embeds, row=0).float()
            sync()
        took = time.perf_counter() - t0
        emit(f"{WIDTH} prefill {PROMPT} pos ({CHUNK}-pos chunks), {backend}", f"{took:.3f} s ({PROMPT / took:.0f} tok/s)")
    if "flash" in logits:
        diff = (logits["flash"] - logits["sdpa"]).abs().max().item() / logits["sdpa"].abs().max().item()
        emit(f"{WIDTH} prefill flash vs sdpa logits", f"max |diff| = {diff:.2e} of max |logit|"
             + (" (ok)" if diff <= 2e-2 else " (LARGE)"))
    else:
        emit(f"{WIDTH} prefill, flash", f"skipped: {why}")
    model.attn_backend = "sdpa"
PYEOF

run_part decode_7b 110 "$PY" "$LOG/decode_7b.py" decode
code=$?
take_rows decode_7b
[ $code -ne 0 ] && row "7B decode / prefill" "$(why $code decode_7b)"

# -- 4. bench_ask.py on the mid checkpoint: plain, 4bit, compile -------------------------
cat >"$LOG/bench_ask_rows.py" <<'PYEOF'
"""bench_ask.py's table (and failure lines) as gpu_check rows; 4bit's peak against plain's."""
import json
import sys
from pathlib import Path

log, part, peaks_file = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
note_file = Path(sys.argv[4]) if len(sys.argv) > 4 else None
note = note_file.read_text().strip() if note_file and note_file.is_file() else ""
peaks = json.loads(peaks_file.read_text()) if peaks_file.is_file() else {}
for line in log.read_text(errors="replace").splitlines():
    if line.startswith("# ") and "failed" in line:
        print(f"bench_ask {part}\tfailed: {line[2:][:200]}")
        continue
    cells = [c.strip() for c in line.split(" | ")]
    if len(cells) != 13 or cells[2] not in ("ours", "reference"):
        continue
    size, frames, impl, variant, attn, load, ttft, tps, _, rss_peak, gpu, weights, hbm = cells
    text = f"decode {tps} tok/s, TTFT {ttft} s, load {load} s, peak GPU {gpu} MB, peak RSS {rss_peak} MB, weights {weights} MB"
    if hbm not in ("–", "-"):
        text += f", {hbm} of the HBM limit"
    key = f"{impl}-{variant}"
    try:
        peaks[key] = float(gpu)
    except ValueError:
        pass
    plain = peaks.get(f"{impl}-plain")
    if variant in ("4bit", "8bit") and plain and key in peaks:
        text += f"; peak GPU = {100 * peaks[key] / plain:.0f}% of plain"
    if impl == "ours" and note:
        text += " " + note
    print(f"bench_ask {size} {frames} frames: {impl} {variant} ({attn})\t{text}")
peaks_file.write_text(json.dumps(peaks))
PYEOF

if [ "$DRY" = 1 ]; then
    ASK=(tiny cpu float32 8 16)
else
    ASK=(mid cuda bfloat16 8 64)
fi
ASK_ROOT=${TMPDIR:-/tmp}/llava-bench # bench_ask.py's default --workdir
bench_ask() { # bench_ask VARIANT SECONDS
    local variant=$1 want=$2 part="bench_ask_$1"
    run_part "$part" "$want" "$PY" bench/bench_ask.py --sizes "${ASK[0]}" --device "${ASK[1]}" --dtype "${ASK[2]}" \
        --frames "${ASK[3]}" --tokens "${ASK[4]}" --variants "$variant" --workdir "$ASK_ROOT"
    local code=$?
    local before after
    before=$(wc -l <"$ROWS")
    "$PY" "$LOG/bench_ask_rows.py" "$LOG/$part.log" "$variant" "$LOG/peaks.json" "$LOG/$part.note" >>"$ROWS"
    after=$(wc -l <"$ROWS")
    if [ $code -ne 0 ]; then
        row "bench_ask $variant" "$(why $code "$part")"
    elif [ "$before" = "$after" ]; then
        row "bench_ask $variant" "failed: no result line; $(last_line "$part")"
    fi
}
if [ $HAS_TRANSFORMERS = 0 ]; then
    row "bench_ask (plain, 4bit, compile)" "skipped: transformers is not installed (it builds the checkpoint: pip install -e '.[test]')"
else
    bench_ask plain 100 # the first run also builds the mid checkpoint
    if [ $BNB = 1 ]; then
        bench_ask 4bit 70
    else
        row "bench_ask 4bit (memory)" "skipped: no bitsandbytes"
    fi
    bench_ask compile 90
fi

# -- 5. with the time left: the compiled decode step at 7B widths ------------------------
run_part compile_7b 120 "$PY" "$LOG/decode_7b.py" compile
code=$?
take_rows compile_7b
[ $code -ne 0 ] && row "7B compiled decode (rest of the budget)" "$(why $code compile_7b)"

print_table

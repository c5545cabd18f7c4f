#!/usr/bin/env bash
# Every figure of the performance table in BENCHMARKS.md ("Targets, second round"), before and
# after, in one go: about 10 minutes on 2 idle cores. Run it on an otherwise idle machine (the
# tables print the load average they started at), from the repository root:
#
#   scripts/bench_all.sh [BASE_REV]     # BASE_REV: the "before" code (default 9c3c69b)
#   BENCH_ALL_QUICK=1 scripts/bench_all.sh   # tiny sizes, one repeat: checks the script, figures meaningless
#
# "before" runs this checkout's benchmark scripts against BASE_REV's package (git archive of its
# src/ into a temporary folder, put first on PYTHONPATH); "after" against this checkout's.
# Output: bench_results/all/*.json and *.log, and the summary table printed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
BASE_REV=${1:-9c3c69b}
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo "$PWD/.venv/bin/python" || command -v python3)}
OUT=bench_results/all
mkdir -p "$OUT"
BASE=$(mktemp -d)
trap 'rm -rf "$BASE"' EXIT
git archive "$BASE_REV" src | tar -x -C "$BASE"
export WANDB_MODE=disabled HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
run() {  # run NAME SRC COMMAND...: one benchmark with SRC's package first on the path, log in $OUT/NAME.log
    local name=$1 src=$2
    shift 2
    echo "== $name ($(date +%H:%M:%S)): $*"
    (cd scripts && PYTHONPATH="$src" "$PY" "$@" --json "../$OUT/$name.json") >"$OUT/$name.log" 2>&1 \
        || { echo "   FAILED: tail of $OUT/$name.log"; tail -n 20 "$OUT/$name.log"; exit 1; }
}
HERE=$PWD/src
if [ "${BENCH_ALL_QUICK:-0}" = 1 ]; then
    L=256 L_LONG=512 HEADS=(--heads 2 --head-dim 32) REPEATS=1 STARTUP=(--repeats 1 --wandb-modes disabled) SMALL=tiny TINY_REPEATS=2
else
    L=2048 L_LONG=8192 HEADS=() REPEATS=3 STARTUP=(--repeats 3) SMALL=small TINY_REPEATS=30
fi
# 1. start-up: command -> first optimizer step, experiment=smoke, W&B disabled and offline (~2.5 min)
run startup_before "$BASE/src" bench_startup.py "${STARTUP[@]}" --src "$BASE/src"
run startup_after "$HERE" bench_startup.py "${STARTUP[@]}" --src "$HERE"
# 2. MMCA at 2048 positions, 32 heads x 128, both layouts (1576 and 788 image tokens) (~3 min)
ATTN=(bench_attention.py --lengths $L "${HEADS[@]}" --images-per-512 2 1 --repeats $REPEATS --candidates causal reference_style mmca)
run attention_2048_before "$BASE/src" "${ATTN[@]}"
run attention_2048_after "$HERE" "${ATTN[@]}"
# 3. MMCA at 8192 positions (8 heads to stay in minutes; the ratios are per head) (~1 min)
run attention_8192 "$HERE" bench_attention.py --lengths $L_LONG --heads ${HEADS[1]:-8} "${HEADS[@]:2}" --images-per-512 2 1 --repeats 2 --candidates causal mmca
# 4. FlexAttention MMCA (decoder.attention=mmca_flex), compiled, forward only on CPU (~1.5 min)
run attention_flex "$HERE" bench_attention.py --lengths $L "${HEADS[@]}" --images-per-512 2 1 --repeats 2 --candidates causal mmca mmca_flex
# 5. whole step: small, bare loop / framework / with MMCA / seed-like; tiny framework / bare (~2 min)
run train_small "$HERE" bench_train.py --preset $SMALL --candidates bare after after_mmca seed_like --repeats $REPEATS
run train_tiny "$HERE" bench_train.py --preset tiny --candidates bare after --repeats $TINY_REPEATS

"$PY" - "$OUT" <<'PYEOF'
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
load = lambda name: json.loads((out / f"{name}.json").read_text())
cpu = load("train_small")["cpu"]
print(f"\nmachine: {cpu['cpu']}, {cpu['cores']} cores, AVX2 {cpu['avx2']}, AVX-512 {cpu['avx512f']}, "
      f"AVX-512 BF16 {cpu['avx512_bf16']}, AMX {cpu['amx_bf16']}, torch {cpu['torch']}; load average at the start of each "
      "benchmark in its .log / .json")
rows = []
small = load("train_small")["results"]
rows.append(("whole small step vs seed-like step (seed_like / after_mmca)", "-",
             f"{small['seed_like']['step_s'] / small['after_mmca']['step_s']:.2f}x "
             f"({small['seed_like']['step_s']:.2f} s vs {small['after_mmca']['step_s']:.2f} s)"))
for name in ("before", "after"):
    for r in load(f"attention_2048_{name}")["results"]:
        f, b = r["forward_s"], r["forward_backward_s"]
        rows.append((f"MMCA / causal SDPA @{r['length']}, {r['image_tokens']} image tokens (fwd; fwd+bwd)", name,
                     f"{f['mmca'] / f['causal']:.2f}x; {b['mmca'] / b['causal']:.2f}x"))
        rows.append((f"MMCA vs reference style @{r['length']}, {r['image_tokens']} image tokens (fwd; fwd+bwd)", name,
                     f"{f['reference_style'] / f['mmca']:.2f}x; {b['reference_style'] / b['mmca']:.2f}x faster"))
long = load("attention_8192")
for r in long["results"]:
    f, b = r["forward_s"], r["forward_backward_s"]
    rows.append((f"MMCA / causal SDPA @{r['length']} ({long['args']['heads']} heads), {r['image_tokens']} image tokens (fwd; fwd+bwd)", "after",
                 f"{f['mmca'] / f['causal']:.2f}x; {b['mmca'] / b['causal']:.2f}x"))
for r in load("attention_flex")["results"]:
    f = r["forward_s"]
    rows.append((f"mmca_flex / causal @{r['length']} fwd, {r['image_tokens']} image tokens (mmca: {f['mmca'] / f['causal']:.2f}x)", "after",
                 f"{f['mmca_flex'] / f['causal']:.2f}x, first call (compile) {r['flex_first_call_s']:.1f} s"))
tiny = load("train_tiny")["results"]
rows.append(("framework / bare loop, tiny default", "-", f"{tiny['after']['step_s'] / tiny['bare']['step_s']:.3f}"))
small_json = load("train_small")
mfu = small["after"]["mfu"]
rows.append(("small MFU (project formula), `after`", "-",
             f"{mfu:.1%}" if mfu is not None else f"not reported: peak swung {small_json['peak_swing']['fp32']:.0%}"))
for name in ("before", "after"):
    medians = load(f"startup_{name}")["medians"]
    for mode, values in medians.items():
        rows.append((f"command -> first optimizer step, experiment=smoke, WANDB_MODE={mode}", name,
                     f"{values['first_step_s']:.2f} s (whole command {values['total_s']:.2f} s)"))
    startup = load(f"startup_{name}")
    rows.append(("import torch, transformers, deepspeed (plain; as the engine imports deepspeed)", name,
                 f"{startup['import_torch_transformers_deepspeed_s']:.2f} s; {startup['import_as_the_engine_does_s']:.2f} s"))
width = max(len(r[0]) for r in rows)
print(f"{'figure':{width}s}  {'code':6s}  value")
for figure, code, value in rows:
    print(f"{figure:{width}s}  {code:6s}  {value}")
PYEOF

#!/usr/bin/env bash
# The GPU path end to end on one machine with one CUDA GPU, in about 8 minutes, then one table:
#   1. pytest -m gpu                   (tests/test_gpu.py: NCCL + gloo group, CUDA timing, host reads;
#                                       tests/test_mmca.py: decoder.attention=mmca_flex fwd + bwd vs the gathered form)
#   2. experiment=smoke in bf16 (fp32 with --cpu), decoder.attention=mmca, train.gradient_checkpointing=true, zero=2
#   3. the same with zero=3
#   4. export the zero=3 run's checkpoint -> chat --script -> evaluate synthetic, on the GPU
#   5. scripts/bench_attention.py: MMCA (gathered and FlexAttention) vs one causal SDPA call at 2048
#      and 8192 positions, bf16, both layouts (1576 / 788 of 2048 positions image)
#   6. scripts/bench_train.py --preset medium: step time and MFU of a ~1.2 B model in bf16
#
#   scripts/gpu_check.sh            # on the GPU machine, from the checkout (or any folder: it cd's)
#   scripts/gpu_check.sh --cpu      # the same steps, CPU-sized (4 steps, tiny benchmarks): checks the
#                                   # script itself; tests/test_gpu_check.py runs it
#
# Output (logs, run directories, JSON) in $GPU_CHECK_OUT (default ./gpu_check_out); exit status 1
# when a step failed (its log's tail is printed), 0 otherwise.
#
# No internet is needed. Expected installed: torch (a CUDA build), transformers, peft, safetensors,
# accelerate. Whatever else the steps import and is missing (deepspeed, hydra-core, omegaconf,
# wandb, rich, orjson, pillow, pytest, ...) is installed from wheels in ./.whl when that folder
# exists. Prepare it on a machine with internet and the same Python version:
#   python -m pip download -d .whl 'deepspeed>=0.19,<0.20' hydra-core==1.3.8 'omegaconf>=2.3,<2.4' \
#       'wandb>=0.31' rich tqdm orjson pillow pytest && rm -f .whl/torch-* .whl/nvidia_* .whl/triton-*
# The package itself runs from src/ (PYTHONPATH), so nothing is built.
set -uo pipefail

MODE=gpu
[ "${1:-}" = "--cpu" ] && MODE=cpu
cd "$(dirname "$0")/.."
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo "$PWD/.venv/bin/python" || command -v python3)}
OUT=${GPU_CHECK_OUT:-gpu_check_out}
rm -rf "$OUT" && mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" WANDB_MODE=disabled HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export DSVL_CACHE_DIR="$OUT/cache" PYTHONUNBUFFERED=1
: >"$OUT/steps.tsv"

if [ -d .whl ]; then
    missing=$("$PY" - <<'EOF'
import importlib.util
wanted = {"deepspeed": "deepspeed", "hydra": "hydra-core", "omegaconf": "omegaconf", "wandb": "wandb", "rich": "rich",
          "tqdm": "tqdm", "orjson": "orjson", "PIL": "pillow", "pytest": "pytest"}
print(" ".join(package for module, package in wanted.items() if importlib.util.find_spec(module) is None))
EOF
)
    if [ -n "$missing" ]; then
        echo "installing from .whl: $missing"
        "$PY" -m pip install -q --no-index --find-links .whl $missing || { echo "installing $missing from .whl failed"; exit 1; }
    fi
fi

if [ "$MODE" = gpu ]; then
    "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA GPU visible: run scripts/gpu_check.sh --cpu here')" || exit 1
    STEPS=20 PRECISION=bf16 SUITE=synthetic BENCH_ATTENTION="--device cuda --dtype bf16 --lengths 2048 8192 --images-per-512 2 1 --candidates causal mmca mmca_flex --repeats 5"
    BENCH_TRAIN="--device cuda --preset medium --candidates after_bf16 --repeats 3"
else
    # fp32: bf16 matmuls on a CPU without AMX run ~10x slower than fp32 (the GPU run is bf16)
    STEPS=4 PRECISION=fp32 SUITE=demo BENCH_ATTENTION="--device cpu --dtype fp32 --lengths 512 --heads 4 --head-dim 32 --candidates causal mmca --repeats 1"
    BENCH_TRAIN="--device cpu --preset tiny --candidates after --repeats 1"
fi

# step NAME COMMAND...: runs it with its log in $OUT/NAME.log, records status and seconds
step() {
    local name=$1 started status
    shift
    started=$(date +%s)
    echo "== $name: $*"
    "$@" >"$OUT/$name.log" 2>&1
    status=$?
    printf '%s\t%s\t%s\n' "$name" "$status" "$(($(date +%s) - started))" >>"$OUT/steps.tsv"
    if [ "$status" -ne 0 ]; then
        echo "   FAILED (exit $status); last lines of $OUT/$name.log:"
        tail -n 15 "$OUT/$name.log" | sed 's/^/   | /'
    fi
    return 0
}

SMOKE=(experiment=smoke train.precision=$PRECISION decoder.attention=mmca train.gradient_checkpointing=true
       train.max_steps=$STEPS train.log_every_n_steps=$((STEPS / 4)) eval.every_n_steps=$STEPS train.progress_bar=false)
step pytest_gpu "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py tests/test_mmca.py
step train_zero2 "$PY" -m dsvl_exp.train "${SMOKE[@]}" zero=2 hydra.run.dir="$OUT/zero2"
step train_zero3 "$PY" -m dsvl_exp.train "${SMOKE[@]}" zero=3 hydra.run.dir="$OUT/zero3"
step export "$PY" -m dsvl_exp.export "$OUT/zero3" --out "$OUT/exported"
"$PY" - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
from PIL import Image
out = Path(sys.argv[1])
Image.new("RGB", (32, 32), (220, 30, 30)).save(out / "red.png")
rounds = [{"images": [str(out / "red.png")], "question": "What colour is the shape in image 1?"},
          {"question": "What shape is in image 1?"}]
(out / "rounds.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rounds))
EOF
step chat "$PY" -m dsvl_exp.chat "$OUT/exported" --script "$OUT/rounds.jsonl" --greedy --max-new-tokens 8
step evaluate "$PY" -m dsvl_exp.evaluate "$OUT/exported" "$SUITE" --out "$OUT/eval" --max-new-tokens 8
(cd scripts && step bench_attention "$PY" bench_attention.py $BENCH_ATTENTION --json "$OUT/bench_attention.json")
(cd scripts && step bench_train "$PY" bench_train.py $BENCH_TRAIN --json "$OUT/bench_train.json")

"$PY" - "$OUT" "$MODE" <<'EOF'
import json, sys
from pathlib import Path

out, mode = Path(sys.argv[1]), sys.argv[2]
import torch
device = torch.cuda.get_device_name(0) if mode == "gpu" else "CPU (--cpu)"
print(f"\ngpu_check on {device}, torch {torch.__version__}")
rows = [line.split("\t") for line in (out / "steps.tsv").read_text().splitlines()]
results = {}
for name in ("zero2", "zero3"):
    path = out / name / "metrics.jsonl"
    if path.exists():
        records = [json.loads(line) for line in path.read_text().splitlines()]
        train = [r for r in records if "train/loss" in r]
        evals = [r for r in records if "eval/loss" in r]
        if train:
            last = train[-1]
            results[f"train_{name}"] = (
                f"loss {last['train/loss']:.4f} | eval loss {evals[-1]['eval/loss']:.4f} | " if evals else f"loss {last['train/loss']:.4f} | ") + (
                f"tokens/s {last['perf/tokens_per_s']:.0f} | MFU {last.get('perf/mfu', 0):.2%} | "
                f"step {last['perf/step_time_s']:.3f}s (data {last['perf/data_wait_s']:.3f}, fwd-bwd "
                f"{last['perf/forward_backward_s']:.3f}, opt {last['perf/optimizer_s']:.3f}) | mem {last['perf/peak_memory_gib']:.2f} GiB")
accuracy = out / "eval" / "accuracy.json"
if accuracy.exists():
    results["evaluate"] = json.dumps(json.loads(accuracy.read_text()))[:110]
chat_log = out / "chat.log"
if chat_log.exists():
    answers = [line for line in chat_log.read_text().splitlines() if line.startswith("{")]
    results["chat"] = f"{len(answers)} JSON answer line(s)"
bench = out / "bench_attention.json"
if bench.exists():
    results["bench_attention"] = " | ".join(
        f"L={r['length']} ({r['image_tokens']} image): " + ", ".join(
            f"{name}/causal fwd {r['forward_s'][name] / r['forward_s']['causal']:.2f}x"
            + (f" fwd+bwd {r['forward_backward_s'][name] / r['forward_backward_s']['causal']:.2f}x"
               if name in r['forward_backward_s'] else "")
            for name in ("mmca", "mmca_flex") if name in r['forward_s'])
        for r in json.loads(bench.read_text())["results"])
bench = out / "bench_train.json"
if bench.exists():
    data = json.loads(bench.read_text())
    results["bench_train"] = " | ".join(f"{name}: {r['step_s']:.3f} s/step, MFU " + (
        f"{r['mfu']:.1%}" if r["mfu"] is not None else "not reported (the peak swung)") for name, r in data["results"].items())
print(f"{'step':16s} {'status':7s} {'s':>5s}  result")
failed = 0
for name, status, seconds in rows:
    failed += status != "0"
    print(f"{name:16s} {'ok' if status == '0' else 'FAIL ' + status:7s} {seconds:>5s}  {results.get(name, '')}")
sys.exit(1 if failed else 0)
EOF

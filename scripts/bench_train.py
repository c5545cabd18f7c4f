"""Training-step time side by side: the framework's DeepSpeed step against a bare PyTorch loop,
before/after the step's speed-ups, and MFU.

    python scripts/bench_train.py --preset small [--repeats 5] [--candidates bare before after]
        [--attention causal] [--json PATH]
    python scripts/bench_train.py --preset small --candidates after zero2 zero2_fused stage0 --repeats 5
    python scripts/bench_train.py --preset medium --candidates after_bf16 --device cuda   # MFU on a GPU

Presets (built with the package's own builders, random init, everything trains):
  tiny   the default config's model: CLIP 32 px / patch 8 (17 tokens), 64 x 2 layers; decoder
         64 x 2 layers, the bundled tokenizer's vocab; micro batch 8 x 64 positions, 1 image each
  small  CLIP 224 px / patch 16 (197 tokens), 256 x 4 layers; decoder 512 hidden x 8 layers,
         1376 MLP, vocab 32,000 (~60 M parameters); micro batch 4 x 512 positions, 2 images each,
         32 supervised positions per row (128 in all)
  medium for a GPU: CLIP-L/14 at 224 px (303 M), decoder 2048 hidden x 16 layers, 5504 MLP,
         vocab 32,000 (~0.9 B); micro batch 4 x 2048 positions, 2 images each, 128 supervised per row

Candidates, each its own copy of the same initial model, stepped in turn in one process:
  bare         forward, backward, clip_grad_norm_(1.0), torch.optim.AdamW (foreach): no framework
  before       the framework as it was: ZeRO-2 engine + torch AdamW, LM head over every position
  after        the framework now: build_engine's choice for this world size, LM head on labels only
  zero2 / zero2_fused / stage0 / stage0_fused   the optimizer-path options, with today's loss
  after_bf16   `after` with train.precision=bf16
  after_mmca   `after` with decoder.attention=mmca (the same weights): MMCA's cost in a step
  seed_like    a step as the reference (DeepSpeed-VisualChat) takes it, on the same weights: its eager
               MMCA (scripts/bench_attention.py's reference_style: Python-loop image mask, two fp32
               softmaxes, rebuilt in every layer), LM head over every position, ZeRO-2 + torch AdamW.
               `seed_like / after_mmca` is the "whole step vs seed-like step" figure
MFU = model FLOPs / step time / measured peak, model FLOPs = 6 x (decoder body + projection +
trained vision parameters) x their tokens + 6 x vocab x hidden x supervised positions (the LM
head only where there are labels) + 12 x layers x hidden x L^2 / 2 per row (causal attention
scores and values, fwd + bwd). The peak is the best of 2048^3 fp32 matmuls (bf16: 512^3), measured
before and after the candidates: when the two differ by more than --peak-swing (default 15 %), the
machine's speed changed during the run and MFU is not reported (the step ratios still are).
"""

from __future__ import annotations

import argparse
import copy
import functools
import time
import types

import torch
from transformers import get_scheduler

from bench_attention import reference_style
from bench_common import alternate, print_machine_header, write_json
from dsvl_exp.data.template import IGNORE_INDEX
from dsvl_exp.models.decoder import build_llama_decoder
from dsvl_exp.models.dsvl import DSVLModel, DSVLOutput, causal_lm_loss
from dsvl_exp.models.projection import build_baseline_projection
from dsvl_exp.models import mmca as mmca_module
from dsvl_exp.models.flops import flop_counts, step_flops
from dsvl_exp.models.vision import build_clip_vision_tower
from dsvl_exp.training import distributed
from dsvl_exp.training import engine as engine_module

PRESETS = {
    "tiny": dict(vision=dict(image_size=32, patch_size=8, hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128),
                 decoder=dict(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128), vocab=None,
                 batch=8, length=64, images_per_row=1, supervised_per_row=16),
    "small": dict(vision=dict(image_size=224, patch_size=16, hidden_size=256, num_layers=4, num_heads=4, intermediate_size=1024),
                  decoder=dict(hidden_size=512, num_layers=8, num_heads=8, intermediate_size=1376), vocab=32000,
                  batch=4, length=512, images_per_row=2, supervised_per_row=32),
    "medium": dict(vision=dict(image_size=224, patch_size=14, hidden_size=1024, num_layers=24, num_heads=16, intermediate_size=4096),
                   decoder=dict(hidden_size=2048, num_layers=16, num_heads=16, intermediate_size=5504), vocab=32000,
                   batch=4, length=2048, images_per_row=2, supervised_per_row=128),
}
ZERO = {"stage": 2, "overlap_comm": False, "contiguous_gradients": True, "reduce_bucket_size": 500_000_000,
        "allgather_bucket_size": 500_000_000, "offload_optimizer": {"device": "none"}, "offload_param": {"device": "none"}}
IMAGE_TOKEN, PAD_TOKEN, EOS_TOKEN = 3, 0, 2


def build(preset: dict, attention: str) -> DSVLModel:
    from dsvl_exp.models.tokenizer import load_tokenizer

    vocab = preset["vocab"] or len(load_tokenizer())
    torch.manual_seed(0)
    vision = build_clip_vision_tower(**preset["vision"])
    decoder = build_llama_decoder(vocab, attention=attention, max_position_embeddings=4096, **preset["decoder"])
    projection = build_baseline_projection(vision.hidden_size, decoder.config.hidden_size)
    return DSVLModel(vision, projection, decoder, IMAGE_TOKEN, PAD_TOKEN, EOS_TOKEN)


def make_batch(model: DSVLModel, preset: dict) -> dict:
    g = torch.Generator().manual_seed(0)
    rows, images = preset["batch"], preset["images_per_row"]
    tokens = model.tokens_per_image
    text = preset["length"] - images * (tokens - 1)
    vocab = model.decoder.config.vocab_size
    input_ids = torch.randint(4, vocab, (rows, text), generator=g)
    for k in range(images):  # images spread through the prompt
        input_ids[:, 1 + k * (text // (2 * images))] = IMAGE_TOKEN
    labels = input_ids.clone()
    labels[:, : text - preset["supervised_per_row"]] = IGNORE_INDEX
    size = preset["vision"]["image_size"]
    return dict(images=torch.randn(rows * images, 3, size, size, generator=g), input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids), labels=labels, image_num=[images] * rows)


def full_logits_forward(self, images, input_ids, attention_mask, labels=None, image_num=None):
    """The forward as it was: the LM head over every position, then the loss on the labelled ones."""
    spliced = self.splice(images, input_ids, attention_mask, image_num, labels=labels)
    logits = self.decoder(inputs_embeds=spliced.embeds, position_ids=spliced.position_ids, use_cache=False,
                          **self.mask_kwargs(spliced.token_types)).logits
    loss, count = causal_lm_loss(logits, spliced.labels)
    return DSVLOutput(loss=loss, logits=logits, num_supervised_tokens=count)


def seed_like_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """The reference's eager MMCA as a transformers attention function (masks rebuilt per layer)."""
    groups = getattr(module, "num_key_value_groups", 1)
    key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    return reference_style(query, key, value, kwargs[mmca_module.TOKEN_TYPES_KWARG], scaling).contiguous(), None


def build_seed_like(preset: dict) -> DSVLModel:
    """The `mmca` model's weights (same seed) with the reference's attention and full logits. Listed
    in MMCA_IMPLEMENTATIONS so DSVLModel hands it the token types, as it does for `mmca`."""
    from transformers import AttentionInterface

    mmca_module.MMCA_IMPLEMENTATIONS["seed_like"] = seed_like_attention
    AttentionInterface.register("seed_like", seed_like_attention)
    model = build(preset, "mmca")
    model.decoder.set_attn_implementation("seed_like")
    model.forward = types.MethodType(full_logits_forward, model)
    return model


def engine_step(model, batch, precision="fp32", zero_stage=None, fused=None):
    """One candidate: (step function, engine). zero_stage/fused None: the framework decides
    (zero.single_rank=stage0, the default: one fp32 ZeRO-2 rank runs as stage 0)."""
    zero = dict(ZERO, stage=2 if zero_stage is None else zero_stage,
                single_rank="stage0" if zero_stage is None else "as_configured")
    ds_config = engine_module.deepspeed_config(zero, batch["input_ids"].shape[0], 1, 1, precision, 1.0)
    groups = engine_module.parameter_groups(model, 1e-4, None, 0.0)
    adamw = functools.partial(torch.optim.AdamW, betas=(0.9, 0.95), eps=1e-8)
    optimizer = engine_module.build_optimizer(adamw, groups, 1e-4, fused=fused)
    engine, _ = engine_module.build_engine(model, optimizer, get_scheduler("constant", optimizer), ds_config)

    def step():
        out = engine(**batch)
        engine.backward(out.loss)
        engine.step()
        return float(out.loss.detach())
    return step, engine


def bare_step(model, batch):
    model.to(batch["input_ids"].device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0)

    def step():
        out = model(**batch)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(out.loss.detach())
    return step


def model_flops(model: DSVLModel, preset: dict) -> float:
    rows = preset["batch"]
    return step_flops(flop_counts(model), rows=rows, length=preset["length"],
                      image_tokens=rows * preset["images_per_row"] * model.tokens_per_image,
                      supervised_tokens=rows * preset["supervised_per_row"])


def matmul_peak(dtype, size: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def measured_peaks(device) -> dict:
    """fp32 / bf16 matmul peaks in FLOP/s; on CUDA NVIDIA's data sheet (the training log's rule)."""
    if device.type == "cuda":
        from dsvl_exp.training.throughput import device_peak

        peaks = {precision: device_peak(device, precision) for precision in ("fp32", "bf16")}
        print("peaks:", {precision: p.source for precision, p in peaks.items()})
        return {precision: p.flops_per_s for precision, p in peaks.items()}
    # bf16 without AVX-512 BF16 / AMX is slow enough that 2048^3 takes minutes: 512^3 then
    return {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16, 512, 3)}


def peak_swing(before: dict, after: dict) -> dict:
    """Per precision: max / min - 1 of the peak measured before and after the candidates."""
    return {p: max(before[p], after[p]) / min(before[p], after[p]) - 1 for p in before}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=PRESETS, default="small")
    parser.add_argument("--attention", default="causal")
    parser.add_argument("--candidates", nargs="+", default=["bare", "before", "after"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="auto", help="auto (the GPU when there is one) | cpu")
    parser.add_argument("--peak-swing", type=float, default=0.15,
                        help="no MFU when the peak before and after the run differ by more than this fraction")
    parser.add_argument("--json")
    args = parser.parse_args()
    preset = PRESETS[args.preset]
    distributed.init_process_group()
    device = distributed.device() if args.device == "auto" else torch.device(args.device)
    print_machine_header()
    if device.type == "cuda":
        print("device:", torch.cuda.get_device_name(device))
    peak_before = measured_peaks(device)
    base = build(preset, args.attention)
    batch = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in make_batch(base, preset).items()}
    steps, engines = {}, []
    for name in args.candidates:
        # after_mmca / seed_like: the same weights (same seed) with decoder.attention=mmca / the reference's
        model = {"after_mmca": lambda: build(preset, "mmca"), "seed_like": lambda: build_seed_like(preset)}.get(
            name, lambda: copy.deepcopy(base))()
        if name == "bare":
            steps[name] = bare_step(model, batch)
            continue
        if name in ("before", "zero2", "zero2_fused", "stage0", "stage0_fused"):
            model.forward = types.MethodType(full_logits_forward, model) if name == "before" else model.forward
        options = {"before": dict(zero_stage=2, fused=False), "seed_like": dict(zero_stage=2, fused=False), "after": {}, "after_mmca": {}, "after_bf16": dict(precision="bf16"),
                   "zero2": dict(zero_stage=2, fused=False), "zero2_fused": dict(zero_stage=2, fused=True),
                   "stage0": dict(zero_stage=0, fused=False), "stage0_fused": dict(zero_stage=0, fused=True)}[name]
        steps[name], engine = engine_step(model, batch, **options)
        engines.append(engine)
    parameters = sum(p.numel() for p in base.parameters())
    losses = {name: [] for name in steps}
    recording = {name: (lambda f=f, n=name: losses[n].append(f())) for name, f in steps.items()}
    times = alternate(recording, args.repeats, warmup=1)
    flops = model_flops(base, preset)
    peak_after = measured_peaks(device)
    swing = peak_swing(peak_before, peak_after)
    peak = {p: max(peak_before[p], peak_after[p]) for p in peak_before}
    print(f"matmul peak before / after the run: fp32 {peak_before['fp32'] / 1e9:.0f} / {peak_after['fp32'] / 1e9:.0f} GFLOP/s "
          f"(swing {swing['fp32']:.0%}), bf16 {peak_before['bf16'] / 1e9:.0f} / {peak_after['bf16'] / 1e9:.0f} "
          f"(swing {swing['bf16']:.0%}); MFU uses the higher of the two")
    print(f"\npreset {args.preset}: {parameters / 1e6:.1f} M parameters, {batch['input_ids'].shape[0]} x {preset['length']} "
          f"positions, model FLOPs/step {flops / 1e9:.1f} G; matmul peak fp32 {peak['fp32'] / 1e9:.0f} GFLOP/s, "
          f"bf16 {peak['bf16'] / 1e9:.0f} GFLOP/s")
    reference = "bare" if "bare" in times else next(iter(times))
    print(f"{'candidate':14s} {'step s':>8s} {'x ' + reference:>10s} {'MFU':>6s}  losses (first steps)")
    results = {}
    for name, seconds in times.items():
        precision = "bf16" if name.endswith("bf16") else "fp32"
        mfu = flops / seconds / peak[precision] if swing[precision] <= args.peak_swing else None
        results[name] = {"step_s": seconds, "ratio": seconds / times[reference], "mfu": mfu, "losses": losses[name][:4]}
        shown = f"{mfu:6.1%}" if mfu is not None else f"{'-':>6s}"
        print(f"{name:14s} {seconds:8.3f} {seconds / times[reference]:10.3f} {shown}  {[round(x, 5) for x in losses[name][:4]]}")
    for precision, value in swing.items():
        if value > args.peak_swing and any((n.endswith("bf16")) == (precision == "bf16") for n in times):
            print(f"MFU ({precision}) not reported: the {precision} peak swung {value:.0%} during the run "
                  f"(> {args.peak_swing:.0%}): the machine's speed changed; rerun on a quieter machine")
    if "before" in times and "after" in times:
        print(f"after / before = {times['after'] / times['before']:.3f}")
    if "seed_like" in times:
        for name in ("after_mmca", "after"):
            if name in times:
                print(f"seed_like / {name} = {times['seed_like'] / times[name]:.2f}x (the whole step vs a seed-like step)")
    write_json(args.json, f"bench_train_{args.preset}", {"args": vars(args), "parameters": parameters, "model_flops": flops,
                                                          "peak_flops": peak, "peak_before": peak_before, "peak_after": peak_after,
                                                          "peak_swing": swing, "results": results})


if __name__ == "__main__":
    main()

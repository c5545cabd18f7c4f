"""MMCA against one causal SDPA call and against the reference's style, prompt pass, side by side.

    python scripts/bench_attention.py [--lengths 512 1024 2048] [--heads 32] [--head-dim 128]
        [--images-per-512 2] [--repeats 5] [--dtype fp32] [--device auto] [--candidates ...] [--json PATH]
    python scripts/bench_attention.py --device cuda --dtype bf16 --lengths 2048 8192 --candidates causal mmca

One layer's attention call on [1, heads, L, head_dim]; forward alone and forward + backward.
Candidates, called in turn in one process:
  causal          one `scaled_dot_product_attention(is_causal=True)` (what decoder.attention=causal runs)
  reference_style the reference's eager MMCA (section 1.7): the image mask built with a Python loop
                  over rows, two additive finfo.min masks, two explicit fp32 softmaxes, summed, @ V
  masked_squares  the previous `mmca`: both masks rebuilt per call, two SDPA calls over the full square
  mmca            `dsvl_exp.models.mmca` (gathered); its plan is built once per forward and reused by
                  every layer, so the per-call figure excludes it and `plan_ms` reports it
  mmca_masked     the gathered form with its two cross-branch rectangles masked in full (what `mmca`
                  ran before models/mmca_prefix.py cut them into key-prefix chunks); plan built once
  mmca_flex       `decoder.attention=mmca_flex` (models/mmca_flex.py): two block-masked FlexAttention
                  calls, compiled (the first call, compile included, is timed apart: `flex_first_call_s`);
                  block masks built once like the plan. FlexAttention has no backward on CPU: fwd+bwd "-"
Token layout: text segments with `--images-per-512` images of 197 tokens (CLIP-L/14 at 224 px)
per 512 positions, the shape of the `small` training batch; several values run several layouts
(`--images-per-512 2 1`: 1576 and 788 of 2048 positions image, the issue's two layouts). `--memory` adds each candidate's peak
extra resident memory for one forward, each measured in its own subprocess.
"""

from __future__ import annotations

import argparse
import math
import resource
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from bench_common import alternate, print_machine_header, write_json
from dsvl_exp.models import mmca as mmca_module

TEXT, IMAGE = 1, 2
IMAGE_TOKENS = 197


def token_layout(length: int, images_per_512: float) -> torch.Tensor:
    images = max(1, round(length / 512 * images_per_512))
    text = length - images * IMAGE_TOKENS
    if text < images + 1:
        raise SystemExit(f"{images} images of {IMAGE_TOKENS} tokens do not fit in {length} positions")
    gap = text // (images + 1)
    types = []
    for _ in range(images):
        types += [TEXT] * gap + [IMAGE] * IMAGE_TOKENS
    types += [TEXT] * (length - len(types))
    return torch.tensor([types])


def reference_style(query, key, value, types, scaling):
    """Section 1.7 of the reference, per call: eager, Python-built image mask, fp32 softmaxes."""
    length = types.shape[1]
    minimum = torch.finfo(query.dtype).min
    image_mask = torch.where(types[:, None, :] == IMAGE, 0.0, minimum).repeat(1, length, 1).to(query.dtype)
    for b in range(types.shape[0]):  # the reference's loop: image rows see only their diagonal
        for j in range(length):
            if types[b, j] == IMAGE:
                image_mask[b, j] = minimum
                image_mask[b, j, j] = 0.0
    text_mask = torch.where(types[:, None, :] == TEXT, 0.0, minimum).expand(-1, length, -1).to(query.dtype)
    causal = torch.full((length, length), minimum, dtype=query.dtype, device=query.device).triu(1)
    scores = query @ key.transpose(-1, -2) * scaling
    image_p = torch.softmax((scores + image_mask[:, None] + causal).float(), dim=-1)
    text_p = torch.softmax((scores + text_mask[:, None] + causal).float(), dim=-1)
    return ((image_p + text_p).to(value.dtype) @ value).transpose(1, 2)


def masked_squares(query, key, value, types, scaling):
    """The `mmca` this repository had before the gathered form (masks rebuilt in every layer)."""
    causal, image_keys, text_keys = mmca_module.branch_permissions(types, query.shape[2], legacy=False)
    output = 0
    for keys in (image_keys, text_keys):
        allowed = (causal & keys)[:, None]
        mask = torch.zeros(allowed.shape, dtype=query.dtype, device=query.device).masked_fill(~allowed, torch.finfo(query.dtype).min)
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scaling)
        output = output + out * allowed.any(dim=-1, keepdim=True).to(out.dtype)
    return output.transpose(1, 2)


class Attn(torch.nn.Module):
    num_key_value_groups = 1


DEFAULT_CANDIDATES = ["causal", "reference_style", "masked_squares", "mmca"]


def flex_candidate(query, key, value, types, scaling):
    from dsvl_exp.models.mmca_flex import branch_block_masks, flex_mmca

    masks = branch_block_masks(types)
    if query.device.type == "cpu":  # no CPU backward: FlexAttention refuses inputs that require grad
        query, key, value = query.detach(), key.detach(), value.detach()
    return lambda: flex_mmca(query, key, value, masks, scaling, compiled=True)


def masked_rectangles_candidate(query, key, value, types, scaling):
    plan = mmca_module.gathered_plan(types, query.shape[2], query.dtype, key_prefixes=False)
    rows = (query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2))
    return lambda: mmca_module._gathered(*rows, plan, 1, 0.0, scaling)


def candidates_for(query, key, value, types, scaling, names=None):
    """The candidates named (default: all but mmca_flex); on a GPU each call waits for its kernels."""
    names = names or DEFAULT_CANDIDATES
    every = {
        "causal": lambda: F.scaled_dot_product_attention(query, key, value, is_causal=True, scale=scaling).transpose(1, 2),
        "reference_style": lambda: reference_style(query, key, value, types, scaling),
        "masked_squares": lambda: masked_squares(query, key, value, types, scaling),
        "mmca": lambda: mmca_module.mmca_attention_forward(Attn(), query, key, value, None, scaling=scaling, mmca_token_types=types)[0],
    }
    if "mmca_masked" in names:
        every["mmca_masked"] = masked_rectangles_candidate(query, key, value, types, scaling)
    if "mmca_flex" in names:
        every["mmca_flex"] = flex_candidate(query, key, value, types, scaling)
    chosen = {name: every[name] for name in names}
    return {name: synchronized(f, query.device) for name, f in chosen.items()}


def synchronized(function, device):
    if device.type != "cuda":
        return function

    def run():
        out = function()
        torch.cuda.synchronize(device)
        return out
    return run


def with_backward(function, grad):
    def run():
        out = function()
        out.backward(grad)
    return run


def peak_memory_child(name: str, length: int, args) -> None:
    query, key, value, types, scaling = inputs(length, args.images_per_512[0], args, requires_grad=False)
    if name == "mmca":  # the plan is part of the forward's footprint
        mmca_module._cache.clear()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with torch.no_grad():
        candidates_for(query, key, value, types, scaling)[name]()
    print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)


def inputs(length, images_per_512, args, requires_grad):
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    g = torch.Generator().manual_seed(0)
    # [batch, length, heads, dim] seen as [batch, heads, length, dim]: the layout LLaMA's
    # projections hand to an attention function
    shape = (1, length, args.heads, args.head_dim)
    leaves = [torch.randn(shape, generator=g).to(args.device, dtype).requires_grad_(requires_grad) for _ in range(3)]
    query, key, value = (leaf.transpose(1, 2) for leaf in leaves)
    return query, key, value, token_layout(length, images_per_512).to(args.device), 1 / math.sqrt(args.head_dim)


def time_layout(args, length: int, images_per_512: float) -> dict:
    """One layout at one length: forward and forward + backward of each candidate, side by side."""
    query, key, value, types, scaling = inputs(length, images_per_512, args, requires_grad=True)
    candidates = candidates_for(query, key, value, types, scaling, args.candidates)
    first_call_s = {}
    with torch.no_grad():
        check = candidates["masked_squares" if "masked_squares" in candidates else "causal"]()
        # the same function, other arithmetic: against masked_squares when it runs, else mmca_flex against mmca
        expected = check if "masked_squares" in candidates else None
        errors = {}
        for name in ("mmca", "mmca_masked", "mmca_flex"):
            if name in candidates:
                start = time.perf_counter()
                out = candidates[name]()
                first_call_s[name] = time.perf_counter() - start
                errors[name] = (out - expected).abs().max().item() if expected is not None else math.nan
                expected = out if expected is None else expected
        forward = alternate(candidates, args.repeats)
    grad = torch.randn_like(check)
    trainable = {name: f for name, f in candidates.items() if not (name == "mmca_flex" and args.device.type == "cpu")}
    backward = alternate({name: with_backward(f, grad) for name, f in trainable.items()}, args.repeats)
    start = time.perf_counter()
    for _ in range(args.repeats):
        mmca_module.gathered_plan(types, length, query.dtype)
    synchronized(lambda: None, args.device)()
    plan_ms = (time.perf_counter() - start) / args.repeats * 1e3
    return {"length": length, "images_per_512": images_per_512, "image_tokens": int((types == IMAGE).sum()),
            "forward_s": forward, "forward_backward_s": backward, "plan_ms": plan_ms,
            "max_abs_diff_vs_masked_squares": errors,  # mmca_flex vs mmca when masked_squares did not run
            "flex_first_call_s": first_call_s.get("mmca_flex")}


def peak_memory(args, row: dict, names) -> dict:
    return {name: float(subprocess.run(
        [sys.executable, __file__, "--memory-child", name, str(row["length"]), "--heads", str(args.heads),
         "--head-dim", str(args.head_dim), "--images-per-512", str(row["images_per_512"]), "--dtype", args.dtype],
        capture_output=True, text=True, check=True).stdout.split()[-1]) for name in names}


def print_layout(row: dict, args) -> None:
    forward, backward = row["forward_s"], row["forward_backward_s"]
    errors = ", ".join(f"|{name} - {'masked_squares' if 'masked_squares' in forward else 'mmca'}| {value:.1e}"
                       for name, value in row["max_abs_diff_vs_masked_squares"].items() if value == value)
    print(f"\nL={row['length']}, {row['image_tokens']} image tokens ({row['images_per_512']:g} images per 512)  "
          f"plan {row['plan_ms']:.1f} ms  {errors}")
    if row["flex_first_call_s"] is not None:
        print(f"mmca_flex first call (compile included): {row['flex_first_call_s']:.1f} s")
    print(f"{'':16s} {'fwd s':>8s} {'x causal':>9s} {'fwd+bwd s':>10s} {'x causal':>9s}" + ("   peak MiB" if args.memory else ""))
    reference = "causal" if "causal" in forward else next(iter(forward))
    for name in forward:
        line = f"{name:16s} {forward[name]:8.4f} {forward[name] / forward[reference]:9.2f} "
        line += (f"{backward[name]:10.4f} {backward[name] / backward[reference]:9.2f}" if name in backward else f"{'-':>10s} {'-':>9s}")
        if args.memory:
            line += f"   {row['peak_extra_mib'][name]:8.0f}"
        print(line)
    if {"mmca", "reference_style"} <= set(forward):
        print(f"mmca vs reference_style: fwd {forward['reference_style'] / forward['mmca']:.2f}x faster, "
              f"fwd+bwd {backward['reference_style'] / backward['mmca']:.2f}x")
    if {"mmca", "masked_squares"} <= set(forward):
        print(f"mmca vs masked_squares: fwd {forward['mmca'] / forward['masked_squares']:.2f}x the time")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 1024, 2048])
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--images-per-512", type=float, nargs="+", default=[2], help="one layout per value")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--memory", action="store_true")
    parser.add_argument("--memory-child", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--device", default="auto", help="auto (the GPU when there is one) | cpu | cuda[:N]")
    parser.add_argument("--candidates", nargs="+", choices=[*DEFAULT_CANDIDATES, "mmca_masked", "mmca_flex"], default=None,
                        help="default: all but mmca_flex (on a GPU at 8192 positions reference_style's row loop takes minutes)")
    parser.add_argument("--json")
    args = parser.parse_args()
    args.device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    if args.memory_child:
        return peak_memory_child(args.memory_child[0], int(args.memory_child[1]), args)
    print_machine_header()
    if args.device.type == "cuda":
        print("device:", torch.cuda.get_device_name(args.device))
    if args.memory and args.device.type == "cuda":
        raise SystemExit("--memory measures peak RSS of CPU runs; leave it out with --device cuda")
    results = []
    for images_per_512 in args.images_per_512:
        for length in args.lengths:
            row = time_layout(args, length, images_per_512)
            if args.memory:
                row["peak_extra_mib"] = peak_memory(args, row, row["forward_s"])
            print_layout(row, args)
            results.append(row)
    write_json(args.json, "bench_attention", {"args": {**vars(args), "device": str(args.device)}, "results": results})


if __name__ == "__main__":
    main()

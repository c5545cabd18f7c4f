"""A plan as text (one config) or as a table (a sweep), and as JSON."""

from __future__ import annotations

import json

GIB = 1024**3


def gib(value: float) -> str:
    if value < GIB:
        return f"{value / 1024**2:8.2f} MiB"
    return f"{value / GIB:8.2f} GiB"


def duration(seconds: float) -> str:
    hours, rest = divmod(int(round(seconds)), 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def plan_text(plan: dict) -> str:
    memory = plan["memory"]
    shape = memory["micro_batch_shape"]
    lines = [
        f"plan: {plan['ranks']} rank(s) ({plan['nodes']} node(s) x {plan['gpus_per_node']} x {plan['gpu']['name']}), "
        f"ZeRO-{plan['zero_stage']}, {plan['precision']}, micro-batch {plan['micro_batch_size']} x grad_accum "
        f"{plan['grad_accum']}, gradient checkpointing {'on' if plan['gradient_checkpointing'] else 'off'}",
        f"memory per rank, micro-batch of {shape['rows']} row(s) x {shape['length']} positions "
        f"({shape['images_per_row']} image(s) x {plan['tokens_per_image']} tokens, {shape['supervised_per_row']} supervised):",
    ]
    lines += [f"  {name:42s} {gib(value)}" for name, value in memory["lines"].items()]
    verdict = "fits" if plan["fits"] else "does NOT fit"
    lines.append(f"  {'total':42s} {gib(memory['total'])}  of {gib(plan['gpu']['memory_bytes']).strip()}: {verdict}")
    lines.append(f"  (DeepSpeed's own estimate of the model states, all parameters trained: "
                 f"{gib(memory['deepspeed_estimate_model_states']).strip()})")
    lines.append(f"largest micro-batch that fits: {plan['largest_micro_batch']}")
    for alternative in plan["alternatives"]:
        lines.append(f"  with {alternative['override']:38s} {gib(alternative['total_bytes'])}  "
                     f"{'fits' if alternative['fits'] else 'does not fit'}")
    time = plan["time"]
    lines.append(f"time at an assumed MFU of {time['assumed_mfu']:.0%}: {time['model_flops_per_micro_step'] / 1e12:.2f} TFLOP "
                 f"per micro-step (models/flops.py), {time['step_seconds']:.3f} s per optimizer step, "
                 f"{time['tokens_per_second']:,.0f} tokens/s")
    if time["data"]:
        lines.append(f"  {time['steps_per_epoch']} steps per epoch = {duration(time['epoch_seconds'])} per epoch"
                     + (f", {duration(time['run_seconds'])} for the run" if "run_seconds" in time else "")
                     + f"; {time['train_samples']} training samples, mean length {time['mean_length']:.0f} "
                     f"(padded {time['mean_padded_length']:.0f}), from {time['data']}")
    else:
        lines.append("  per epoch: unknown without the data (every row taken at the worst-case length above)")
    lines += [f"note: {note}" for note in plan["notes"]]
    return "\n".join(lines)


def sweep_table(rows: list[tuple[list[str], dict]]) -> str:
    """One line per job of a sweep: the overrides that differ between jobs, the total per rank, fits, step and epoch time."""
    common = set.intersection(*(set(job) for job, _ in rows)) if rows else set()
    rows = [([o for o in job if o not in common], plan) for job, plan in rows]  # what varies between jobs
    header = f"{'overrides':48s} {'total/rank':>12s} {'fits':>5s} {'max mb':>6s} {'step s':>8s} {'epoch':>8s}"
    lines = [header, "-" * len(header)]
    for overrides, plan in rows:
        time = plan["time"]
        epoch = duration(time["epoch_seconds"]) if time["epoch_seconds"] is not None else "-"
        lines.append(f"{' '.join(overrides).replace(chr(39), '')[:48]:48s} {plan['memory']['total'] / GIB:8.2f} GiB {'yes' if plan['fits'] else 'no':>5s} "
                     f"{plan['largest_micro_batch']:6d} {time['step_seconds']:8.3f} {epoch:>8s}")
    return "\n".join(lines)


def to_json(value) -> str:
    return json.dumps(value, indent=1, default=lambda o: o.item() if hasattr(o, "item") else str(o))

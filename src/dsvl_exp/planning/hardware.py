"""The cards `plan` knows: memory as nvidia-smi reports it and the dense 16-bit tensor-core
peak (vendor datasheets, SXM, without sparsity). `--gpu <bytes>` names any other card by its
memory."""

from __future__ import annotations

from dataclasses import dataclass

from dsvl_exp.errors import UserError

GIB = 1024**3
MIB = 1024**2


@dataclass(frozen=True)
class Gpu:
    name: str
    memory_bytes: int
    peak_flops_16bit: float  # dense bf16/fp16; fp32 runs are planned at this / 2 (TF32 tensor cores)


GPUS = {
    "A100-40GB": Gpu("A100-40GB", 40960 * MIB, 312e12),
    "A100-80GB": Gpu("A100-80GB", 81920 * MIB, 312e12),
    "H100-80GB": Gpu("H100-80GB", 81559 * MIB, 989e12),
    "H200": Gpu("H200", 143771 * MIB, 989e12),
}
DEFAULT_GPU = "A100-80GB"


def parse_gpu(text: str) -> Gpu:
    """A name of GPUS, or a memory size in bytes (the peak then assumed to be an A100's)."""
    if text in GPUS:
        return GPUS[text]
    try:
        memory = int(float(text))
    except ValueError:
        raise UserError(f"--gpu {text!r} is not one of {', '.join(GPUS)} nor a memory size in bytes "
                        "(e.g. --gpu 25769803776 for 24 GiB)") from None
    if memory <= 0:
        raise UserError(f"--gpu {text}: the memory size must be a positive number of bytes")
    return Gpu(f"{memory / GIB:.1f} GiB card", memory, GPUS["A100-80GB"].peak_flops_16bit)

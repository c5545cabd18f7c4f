"""Extract the visual tower of a local Qwen-VL(-Chat) checkpoint for `vision=qwen`.

    python scripts/extract_qwen_vl.py /models/Qwen-VL-Chat /models/qwen_vit
    python -m dsvl_exp.train vision=qwen vision.pretrained=/models/qwen_vit \\
        vision.image_size=448 vision.patch_size=14 vision.width=1664 vision.layers=48 \\
        vision.heads=16 vision.mlp_size=8192 vision.output_dim=4096 vision.num_queries=256

Keeps the `transformer.visual.` tensors, strips that prefix and drops `proj` (the reference's
helper/extract_qwen_vl.py does the same), reading only the shards that hold visual tensors.
No model code is imported or run (no trust_remote_code): safetensors or .bin shards, with or
without an index json. Writes model.safetensors (or pytorch_model.bin with --bin) and
vision_config.json with the architecture values (heads from the checkpoint's config.json).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

PREFIX = "transformer.visual."
DROPPED = {"proj"}  # the projection into Qwen's LLM; DeepSpeed-VisualChat has its own


def checkpoint_files(folder: Path) -> dict[str, list[str] | None]:
    """Shard file -> the keys wanted from it (None: unknown, read it all)."""
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = folder / index_name
        if index.exists():
            weight_map = json.loads(index.read_text())["weight_map"]
            files: dict[str, list[str] | None] = {}
            for key, file in weight_map.items():
                if key.startswith(PREFIX):
                    files.setdefault(file, []).append(key)
            return files
    for single in ("model.safetensors", "pytorch_model.bin"):
        if (folder / single).exists():
            return {single: None}
    raise FileNotFoundError(f"{folder} holds no model.safetensors / pytorch_model.bin (or their index json)")


def read_tensors(path: Path, keys: list[str] | None) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as shard:
            wanted = keys if keys is not None else [k for k in shard.keys() if k.startswith(PREFIX)]
            return {key: shard.get_tensor(key) for key in wanted}
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {key: value for key, value in state.items() if key.startswith(PREFIX) and (keys is None or key in keys)}


def extract(source: Path) -> dict[str, torch.Tensor]:
    visual: dict[str, torch.Tensor] = {}
    for file, keys in checkpoint_files(source).items():
        for key, value in read_tensors(source / file, keys).items():
            name = key[len(PREFIX):]
            if name not in DROPPED:
                visual[name] = value.clone(memory_format=torch.contiguous_format)  # unshared, for safetensors
    if not visual:
        raise ValueError(f"no '{PREFIX}*' tensors in {source}: is this a Qwen-VL checkpoint?")
    return visual


def architecture(visual: dict[str, torch.Tensor], source: Path) -> dict:
    width, _, patch, _ = visual["conv1.weight"].shape
    layers = 1 + max(int(k.split(".")[2]) for k in visual if k.startswith("transformer.resblocks."))
    num_queries, output_dim = visual["attn_pool.query"].shape
    heads = 16
    config_file = source / "config.json"
    if config_file.exists():
        heads = json.loads(config_file.read_text()).get("visual", {}).get("heads", heads)
    image_size = 448
    if config_file.exists():
        image_size = json.loads(config_file.read_text()).get("visual", {}).get("image_size", image_size)
    return {"image_size": image_size, "patch_size": patch, "width": width, "layers": layers, "heads": heads,
            "mlp_size": visual["transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
            "output_dim": output_dim, "num_queries": num_queries}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="a local Qwen-VL or Qwen-VL-Chat folder")
    parser.add_argument("output", type=Path, help="folder to write (vision.pretrained)")
    parser.add_argument("--bin", action="store_true", help="write pytorch_model.bin instead of model.safetensors")
    args = parser.parse_args(argv)
    visual = extract(args.source)
    args.output.mkdir(parents=True, exist_ok=True)
    if args.bin:
        torch.save(visual, args.output / "pytorch_model.bin")
    else:
        from safetensors.torch import save_file

        save_file(visual, str(args.output / "model.safetensors"))
    values = architecture(visual, args.source)
    (args.output / "vision_config.json").write_text(json.dumps(values, indent=2) + "\n")
    overrides = " ".join(f"vision.{k}={v}" for k, v in values.items())
    print(f"wrote {len(visual)} tensors to {args.output}\nuse: vision=qwen vision.pretrained={args.output} {overrides}")


if __name__ == "__main__":
    main()

"""A local lmms-eval task from one of this project's suites, with no hub access: the first round
of each conversation (question, its images, reference answer) as `docs.json`, a task YAML that
reads it with `datasets`' json loader, and `utils.py` scoring exact match as `evaluate` does. The
same questions are also written as `suite.json` (the reference's eval layout) for `evaluate`.

    python -m dsvl_exp.harness.lmms_eval_task synthetic --out tasks/ [--max-new-tokens 4]
    lmms-eval --model dsvl --model_args pretrained=MODEL --tasks dsvl_synthetic --include_path tasks/
    python -m dsvl_exp.evaluate MODEL tasks/suite.json --max-new-tokens 4      # the same questions
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

UTILS = '''"""doc -> images / prompt, and exact match as dsvl_exp.evaluate scores it."""
from PIL import Image

from dsvl_exp.inference.results import exact_match


def doc_to_visual(doc):
    return [Image.open(path).convert("RGB") for path in doc["images"]]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return doc["question"]


def process_results(doc, results):
    return {"exact_match": float(exact_match(results[0], doc["answer"]))}
'''


def task_yaml(name: str, docs: Path, max_new_tokens: int) -> str:
    return f"""task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {docs}
test_split: test
output_type: generate_until
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
doc_to_target: answer
generation_kwargs:
  max_new_tokens: {max_new_tokens}
  temperature: 0
  do_sample: false
  until: []
process_results: !function utils.process_results
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
metadata:
  version: 0
"""


def write_task(suite_spec: str, out: Path, max_new_tokens: int = 4) -> str:
    """Writes the task folder; returns the task name (`dsvl_<suite>`)."""
    from dsvl_exp.inference.suites import read_suite

    suite = read_suite(suite_spec)
    name = f"dsvl_{suite.name}"
    out.mkdir(parents=True, exist_ok=True)
    docs = [{"id": conv.id, "question": first.question, "images": [str(Path(i).resolve()) for i in first.images],
             "answer": first.answer}
            for conv in suite.conversations if (first := conv.rounds[0]).answer is not None]
    (out / "docs.json").write_text("\n".join(json.dumps(doc) for doc in docs) + "\n")
    (out / "suite.json").write_text(json.dumps({d["id"]: [[d["question"], " ".join(d["images"]), d["answer"]]]
                                                for d in docs}, indent=1))
    (out / f"{name}.yaml").write_text(task_yaml(name, (out / "docs.json").resolve(), max_new_tokens))
    (out / "utils.py").write_text(UTILS)
    return name


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m dsvl_exp.harness.lmms_eval_task", description=__doc__.split("\n\n")[0])
    parser.add_argument("suite", help="a suite name or file, as evaluate takes")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--max-new-tokens", type=int, default=4)
    args = parser.parse_args(argv)
    print(write_task(args.suite, args.out, args.max_new_tokens))


if __name__ == "__main__":
    main()

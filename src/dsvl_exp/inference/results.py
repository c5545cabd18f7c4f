"""Scoring and writing evaluation answers: one row per round, JSONL and CSV per suite, and an
accuracy table (exact match and contains, per suite and overall) where reference answers exist.

Two baselines that never look at an image are reported beside the accuracies: the majority
answer (always the suite's most frequent reference answer) and the per-question majority (for
each distinct question text its most frequent answer: the best a model reading only the text
can do)."""

from __future__ import annotations

import csv
import json
import re
from collections import Counter
from pathlib import Path

from dsvl_exp.inference.suites import Suite
from dsvl_exp.training.evaluation import normalize_answer

# The reference's CSV header first (test_name,image_path,question,answer), then what it lacks.
CSV_FIELDS = ("test_name", "image_path", "question", "answer", "round", "image_numbers", "reference", "exact_match", "contains")


def exact_match(predicted: str, reference: str) -> bool:
    return normalize_answer(predicted) == normalize_answer(reference)


def contains(predicted: str, reference: str) -> bool:
    """The reference answer appears in the prediction as whole words ("one" is not in "none")."""
    wanted = normalize_answer(reference)
    return bool(wanted) and re.search(rf"(?<!\w){re.escape(wanted)}(?!\w)", normalize_answer(predicted)) is not None


def suite_rows(suite: Suite, answers: list[list[str]]) -> list[dict]:
    rows = []
    for conversation, conversation_answers in zip(suite.conversations, answers):
        next_image = 1
        for k, (item, answer) in enumerate(zip(conversation.rounds, conversation_answers)):
            row = {
                "suite": suite.name, "test_name": conversation.id, "round": k + 1,
                "images": list(item.images), "image_numbers": list(range(next_image, next_image + len(item.images))),
                "question": item.question, "answer": answer, "reference": item.answer,
            }
            if item.answer is not None:
                row["exact_match"] = exact_match(answer, item.answer)
                row["contains"] = contains(answer, item.answer)
            rows.append(row)
            next_image += len(item.images)
    return rows


def majority_baseline(references: list[str]) -> float:
    if not references:
        return float("nan")
    counts = Counter(normalize_answer(r) for r in references)
    return counts.most_common(1)[0][1] / len(references)


def question_majority_baseline(rows: list[dict]) -> float:
    by_question: dict[str, Counter] = {}
    for row in rows:
        by_question.setdefault(row["question"], Counter())[normalize_answer(row["reference"])] += 1
    return sum(c.most_common(1)[0][1] for c in by_question.values()) / len(rows) if rows else float("nan")


def accuracy_table(rows_by_suite: dict[str, list[dict]]) -> list[dict]:
    """One entry per suite with reference answers, then `overall` (over all scored rounds)."""
    table, every = [], []
    for name, rows in rows_by_suite.items():
        scored = [r for r in rows if r.get("reference") is not None]
        if scored:
            table.append(score(name, scored, len(rows)))
            every += scored
    if len(table) > 1:
        table.append(score("overall", every, sum(len(rows) for rows in rows_by_suite.values())))
    return table


def score(name: str, scored: list[dict], rounds: int) -> dict:
    return {
        "suite": name, "rounds": rounds, "scored": len(scored),
        "exact_match": sum(r["exact_match"] for r in scored) / len(scored),
        "contains": sum(r["contains"] for r in scored) / len(scored),
        "majority_baseline": majority_baseline([r["reference"] for r in scored]),
        "question_majority_baseline": question_majority_baseline(scored),
    }


def format_table(table: list[dict]) -> str:
    lines = ["| suite | rounds | scored | exact match | contains | majority answer | per-question majority |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for entry in table:
        lines.append(f"| {entry['suite']} | {entry['rounds']} | {entry['scored']} | {entry['exact_match']:.3f} | "
                     f"{entry['contains']:.3f} | {entry['majority_baseline']:.3f} | {entry['question_majority_baseline']:.3f} |")
    return "\n".join(lines)


def write_results(out_dir: Path, rows_by_suite: dict[str, list[dict]], table: list[dict],
                  setup: dict | None = None) -> None:
    """`setup` (harness, prompt template, generation settings) is recorded in each accuracy.json
    entry: scores swing with them."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, rows in rows_by_suite.items():
        with open(out_dir / f"{name}.jsonl", "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
        with open(out_dir / f"{name}.csv", "w", encoding="utf-8", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
            writer.writeheader()
            for row in rows:
                writer.writerow({
                    **{key: row.get(key, "") for key in ("test_name", "question", "answer", "round")},
                    # the reference writes the question itself for a text-only round; an empty cell is clearer
                    "image_path": " ".join(row["images"]),
                    "image_numbers": " ".join(map(str, row["image_numbers"])),
                    "reference": row["reference"] if row["reference"] is not None else "",
                    "exact_match": row.get("exact_match", ""),
                    "contains": row.get("contains", ""),
                })
    (out_dir / "accuracy.json").write_text(json.dumps([{**entry, **(setup or {})} for entry in table], indent=2) + "\n")
    (out_dir / "accuracy.md").write_text(format_table(table) + "\n")

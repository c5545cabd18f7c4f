"""The shared file habits (dsvl_exp/files.py): atomic writes and JSON Lines with every bad line named."""

from __future__ import annotations

import logging

import pytest

from dsvl_exp.files import jsonl_records, read_jsonl, write_atomically


def test_write_atomically_replaces_the_whole_file_and_leaves_nothing_beside_it(tmp_path):
    path = tmp_path / "deep" / "manifest.json"
    write_atomically(path, "old")
    assert write_atomically(path, "new", fsync=True) == path
    assert path.read_text() == "new"
    write_atomically(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in path.parent.iterdir()) == ["manifest.json"]


def test_a_failed_write_keeps_the_old_content_and_no_temporary_file(tmp_path):
    path = tmp_path / "latest"
    write_atomically(path, "step-00000003")
    with pytest.raises(TypeError):
        write_atomically(path, 42)  # not text: the write fails after the temporary file exists
    assert path.read_text() == "step-00000003"
    assert [p.name for p in tmp_path.iterdir()] == ["latest"]


def test_read_jsonl_keeps_the_good_lines_and_names_the_bad_ones(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n\n{"step": 2}\n{"step": 3, "train/lo\n')
    content = read_jsonl(path)
    assert content.values == [{"step": 1}, {"step": 2}]
    assert content.bad_lines == [f"{path}:4: malformed JSON (Unterminated string starting at column 13)"]
    assert read_jsonl(tmp_path / "absent.jsonl").values == []


def test_jsonl_records_raise_the_callers_error_naming_the_line(tmp_path):
    path = tmp_path / "script.jsonl"
    path.write_text('{"question": "a"}\n[1,\n')
    records = jsonl_records(path, ValueError)
    assert next(records) == (f"{path}:1", {"question": "a"})
    with pytest.raises(ValueError, match=r"script\.jsonl:2: malformed JSON \(Expecting value at column 4\); fix the line"):
        next(records)


def test_read_metrics_counts_and_logs_a_partial_last_line(tmp_path, caplog):
    from dsvl_exp.repro.metrics import read_metrics

    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "train/loss": 2.5}\n{"step": 2, "tr')
    with caplog.at_level(logging.WARNING, logger="dsvl_exp.repro.metrics"):
        assert read_metrics(tmp_path) == [{"step": 1, "train/loss": 2.5}]
    assert "1 line(s) of" in caplog.text and "metrics.jsonl:2: malformed JSON" in caplog.text


def test_publish_folder_fills_once_and_keeps_a_finished_folder(tmp_path):
    from dsvl_exp.files import publish_folder

    calls = []

    def fill(folder):
        calls.append(folder.name)
        (folder / "eval.jsonl").write_text("{}\n")

    target = tmp_path / "synthetic" / "v1-n8"
    assert publish_folder(target, "eval.jsonl", fill) == target
    assert publish_folder(target, "eval.jsonl", fill) == target  # complete: not filled again
    assert len(calls) == 1 and calls[0].startswith(".v1-n8-")
    assert [p.name for p in target.parent.iterdir()] == ["v1-n8"]  # no staging folder left

    def failing(folder):
        (folder / "half").write_text("x")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        publish_folder(tmp_path / "other", "eval.jsonl", failing)
    assert [p.name for p in tmp_path.iterdir()] == ["synthetic"]


def test_replace_folder_swaps_in_the_new_content_and_keeps_the_old_on_failure(tmp_path):
    from dsvl_exp.files import replace_folder

    target = tmp_path / "export"
    replace_folder(target, lambda folder: (folder.mkdir(), (folder / "a").write_text("1")))
    replace_folder(target, lambda folder: (folder.mkdir(), (folder / "b").write_text("2")))
    assert sorted(p.name for p in target.iterdir()) == ["b"]

    def failing(folder):
        folder.mkdir()
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        replace_folder(target, failing)
    assert (target / "b").read_text() == "2"

"""read_rows: every supported format reads the same rows; every bad input names file and line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alignlab.data.io import Row, read_rows
from alignlab.errors import DataError

FIXTURES = Path(__file__).parent / "fixtures"
ROWS = [{"prompt": "The movie was", "completion": " great"},
        {"prompt": "what is 12+30?", "completion": " 42"}]


def test_jsonl_rows_are_numbered_by_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n\n" + json.dumps(ROWS[1]) + "\n")
    rows = read_rows(path)
    assert rows == [Row(str(path), 1, ROWS[0]), Row(str(path), 3, ROWS[1])]


def test_json_list_and_data_object(tmp_path):
    listed = tmp_path / "list.json"
    listed.write_text(json.dumps(ROWS))
    wrapped = tmp_path / "wrapped.json"
    wrapped.write_text(json.dumps({"data": ROWS}))
    for path in (listed, wrapped):
        rows = read_rows(path)
        assert [r.data for r in rows] == ROWS
        assert [r.row for r in rows] == [1, 2]


def test_csv_fixture():
    rows = read_rows(FIXTURES / "sft.csv")
    assert [r.data for r in rows] == [
        {"prompt": "The movie was", "completion": " great and the acting was wonderful"},
        {"prompt": "what is 12+30?", "completion": " the answer is 42"},
    ]


def test_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS), path)
    rows = read_rows(path)
    assert [r.data for r in rows] == ROWS and rows[0].source == str(path)


def test_save_to_disk_dir_and_split(tmp_path):
    import datasets

    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "single"))
    assert [r.data for r in read_rows(tmp_path / "single")] == ROWS
    both = datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS),
                                 "test": datasets.Dataset.from_list(ROWS[:1])})
    both.save_to_disk(str(tmp_path / "dict"))
    assert [r.data for r in read_rows(tmp_path / "dict", split="test")] == ROWS[:1]
    with pytest.raises(DataError, match="split 'dev' not found; splits: train, test"):
        read_rows(tmp_path / "dict", split="dev")


def test_dir_of_split_files(tmp_path):
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(r) for r in ROWS))
    (tmp_path / "test.jsonl").write_text(json.dumps(ROWS[0]))
    assert [r.data for r in read_rows(tmp_path)] == ROWS
    test_rows = read_rows(tmp_path, split="test")
    assert [r.data for r in test_rows] == ROWS[:1] and test_rows[0].source.endswith("test.jsonl")
    with pytest.raises(DataError, match="no data file for split 'validation'"):
        read_rows(tmp_path, split="validation")


def test_max_rows(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in ROWS * 5))
    assert len(read_rows(path, max_rows=3)) == 3


def test_malformed_line_names_file_and_line():
    path = FIXTURES / "malformed.jsonl"
    with pytest.raises(DataError) as info:
        read_rows(path)
    message = str(info.value)
    assert "malformed.jsonl" in message and "line 3" in message and "not valid JSON" in message
    assert info.value.row == 3


def test_line_that_is_not_an_object(tmp_path):
    path = tmp_path / "list.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n[1, 2]\n")
    with pytest.raises(DataError, match=r"list\.jsonl, row 2: line 2 is a JSON list, expected an object"):
        read_rows(path)


@pytest.mark.parametrize("name", ["empty.jsonl", "empty.json", "empty.csv", "blank.jsonl"])
def test_empty_file(tmp_path, name):
    path = tmp_path / name
    path.write_text("\n\n" if name == "blank.jsonl" else "")
    with pytest.raises(DataError, match=rf"{name}: no rows found"):
        read_rows(path)


def test_missing_file_says_not_found(tmp_path):
    with pytest.raises(DataError, match="file not found: .*nope.jsonl"):
        read_rows(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match="file not found: no_such_dir/train.jsonl"):
        read_rows("no_such_dir/train.jsonl")


def test_unsupported_extension(tmp_path):
    path = tmp_path / "d.txt"
    path.write_text("hello")
    with pytest.raises(DataError, match=r"d\.txt: unsupported file type '\.txt'"):
        read_rows(path)


def test_binary_file_is_not_utf8(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"prompt": "\xff\xfe"}\n')
    with pytest.raises(DataError, match=r"d\.jsonl: not UTF-8 text"):
        read_rows(path)

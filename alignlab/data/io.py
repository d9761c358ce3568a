"""Read dataset rows from a file, a local dataset directory, or the Hugging Face hub.

`read_rows(spec)` returns a list of `Row(source, row, data)`: `source` names the file (or hub dataset),
`row` is the 1-based line number for JSONL (blank lines are skipped but still counted, so the number
matches what an editor shows) and the 1-based row index for every other format, and `data` is the row as
a plain dict. Every failure is a `DataError` that names the file and, where there is one, the line.

Supported specs:
- a `.jsonl` / `.json` / `.parquet` / `.csv` file (a `.json` file holds a list of objects, or an object
  with the list under `data` / `rows` / `examples`);
- a directory written by `datasets.save_to_disk` (read with `datasets.load_from_disk`);
- a directory of data files for the split (`train.jsonl`, `train-00000-of-00001.parquet`, ...);
- a hub dataset name such as `openai/gsm8k` (read with `datasets.load_dataset`; needs the network).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

from alignlab.errors import DataError

SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")


class Row(NamedTuple):
    """One dataset row and where it came from."""

    source: str
    row: int
    data: dict[str, Any]


def read_rows(spec: str | Path, *, split: str = "train", subset: str | None = None,
              max_rows: int | None = None) -> list[Row]:
    """Read every row of `spec` (at most `max_rows`); raise DataError if there are none."""
    path = Path(spec).expanduser()
    if path.is_file():
        rows = _read_file(path, max_rows)
    elif path.is_dir():
        rows = _read_dir(path, split, max_rows)
    elif _looks_like_path(str(spec)):
        raise DataError(f"file not found: {spec} (looked for it relative to {Path.cwd()})", source=str(spec))
    else:
        rows = _read_hub(str(spec), split, subset, max_rows)
    if not rows:
        raise DataError("no rows found (the dataset is empty)", source=str(spec))
    return rows


def _looks_like_path(spec: str) -> bool:
    """A spec that cannot be a hub name (`org/name`) is a path, so a typo reports 'file not found'."""
    return (spec.startswith((".", "/", "~")) or spec.lower().endswith(SUFFIXES) or spec.count("/") > 1
            or "\\" in spec)


def _read_file(path: Path, max_rows: int | None) -> list[Row]:
    suffix = path.suffix.lower()
    readers = {".jsonl": lambda: _read_jsonl(path, max_rows), ".json": lambda: _read_json(path),
               ".parquet": lambda: _read_parquet(path), ".csv": lambda: _read_csv(path)}
    if suffix not in readers:
        raise DataError(f"unsupported file type '{path.suffix}'; use one of {', '.join(SUFFIXES)}",
                        source=str(path))
    try:
        rows = readers[suffix]()
    except UnicodeDecodeError as e:
        raise DataError(f"not UTF-8 text ({e.reason} at byte {e.start})", source=str(path)) from None
    if not rows:
        raise DataError("no rows found (the file is empty)", source=str(path))
    return rows[:max_rows] if max_rows is not None else rows


def _read_jsonl(path: Path, max_rows: int | None) -> list[Row]:
    rows = []
    with path.open(encoding="utf-8-sig") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"line {number} is not valid JSON: {e.msg} (column {e.colno})",
                                source=str(path), row=number) from None
            if not isinstance(data, dict):
                raise DataError(f"line {number} is a JSON {type(data).__name__}, expected an object "
                                "{\"field\": value, ...}", source=str(path), row=number)
            rows.append(Row(str(path), number, data))
            if max_rows is not None and len(rows) >= max_rows:
                break
    return rows


def _read_json(path: Path) -> list[Row]:
    text = path.read_text(encoding="utf-8-sig")
    if not text.strip():
        return []
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"line {e.lineno} is not valid JSON: {e.msg} (column {e.colno})",
                        source=str(path), row=e.lineno) from None
    if isinstance(data, dict):
        lists = [key for key in ("data", "rows", "examples") if isinstance(data.get(key), list)]
        if not lists:
            raise DataError("expected a JSON list of objects, or an object with the list under 'data'; "
                            f"found an object with keys {sorted(data)}", source=str(path))
        data = data[lists[0]]
    if not isinstance(data, list):
        raise DataError(f"expected a JSON list of objects, got a {type(data).__name__}", source=str(path))
    return _check_objects(path, data)


def _check_objects(path: Path, items: list) -> list[Row]:
    rows = []
    for number, item in enumerate(items, start=1):
        if not isinstance(item, dict):
            raise DataError(f"expected an object, got a {type(item).__name__}", source=str(path), row=number)
        rows.append(Row(str(path), number, item))
    return rows


def _read_parquet(path: Path) -> list[Row]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for a corrupt file
        raise DataError(f"cannot read Parquet file: {e}", source=str(path)) from None
    return _check_objects(path, table.to_pylist())


def _read_csv(path: Path) -> list[Row]:
    import pandas as pd

    if path.stat().st_size == 0:
        return []
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise DataError(f"cannot read CSV file: {e}", source=str(path)) from None
    # Empty cells become None rather than NaN, so a missing value reads as missing.
    frame = frame.astype(object).where(frame.notna(), None)
    return _check_objects(path, frame.to_dict("records"))


def _read_dir(path: Path, split: str, max_rows: int | None) -> list[Row]:
    if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists():
        return _read_saved(path, split, max_rows)
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in SUFFIXES)
    if (path / "data").is_dir():
        files += sorted(p for p in (path / "data").iterdir() if p.is_file() and p.suffix.lower() in SUFFIXES)
    prefixes = (f"{split}-", f"{split}_", f"{split}.")
    chosen = [p for p in files if p.stem == split or p.stem.startswith(prefixes)]
    if not chosen and len(files) == 1:
        chosen = files
    if not chosen:
        found = ", ".join(p.name for p in files) or "no data files"
        raise DataError(f"no data file for split '{split}' (expected e.g. {split}.jsonl); found: {found}",
                        source=str(path))
    rows: list[Row] = []
    for file in chosen:
        left = None if max_rows is None else max_rows - len(rows)
        if left == 0:
            break
        rows += _read_file(file, left)
    return rows


def _read_saved(path: Path, split: str, max_rows: int | None) -> list[Row]:
    import datasets

    data = datasets.load_from_disk(str(path))
    source = str(path)
    if isinstance(data, datasets.DatasetDict):
        if split not in data:
            raise DataError(f"split '{split}' not found; splits: {', '.join(data)}", source=str(path))
        data = data[split]
        source = f"{path}[{split}]"
    return _dataset_rows(data, source, max_rows)


def _read_hub(name: str, split: str, subset: str | None, max_rows: int | None) -> list[Row]:
    import datasets

    try:
        data = datasets.load_dataset(name, subset, split=f"{split}[:{max_rows}]" if max_rows else split)
    except Exception as e:  # network, auth, unknown name: all end the same way for the user
        raise DataError(f"not a local file or directory, and loading it from the hub failed: {e}",
                        source=name) from None
    return _dataset_rows(data, f"{name}[{split}]", max_rows)


def _dataset_rows(data: Any, source: str, max_rows: int | None) -> list[Row]:
    if max_rows is not None:
        data = data.select(range(min(max_rows, len(data))))
    return [Row(source, number, dict(item)) for number, item in enumerate(data, start=1)]

"""dko.io: atomic writes (no partial file after an error), JSON round trip and its errors, CSV and text writers."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from dko.io import atomic_path, read_json, write_csv, write_json, write_text


def _leftovers(folder: Path, name: str) -> list[str]:
    """Temporary files of ``atomic_path`` for target ``name`` still in ``folder``."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(f".{name}."))


# ----------------------------------------------------------------------------- atomic_path
def test_atomic_path_renames_on_success(tmp_path):
    target = tmp_path / "sub" / "out.npy"  # the folder is created
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp != target and tmp.name.startswith(".out.npy.")
        assert not target.exists()  # nothing at the target until the block succeeds
        np.save(tmp, np.arange(3))
    assert np.array_equal(np.load(target), np.arange(3))
    assert _leftovers(target.parent, "out.npy") == []


def test_atomic_path_keeps_the_old_file_and_leaves_nothing_after_an_error(tmp_path):
    target = tmp_path / "result.json"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="crash"):
        with atomic_path(target) as tmp:
            tmp.write_text("half-writ")
            raise RuntimeError("crash")
    assert target.read_text() == "old"
    assert _leftovers(tmp_path, "result.json") == []


def test_atomic_path_removes_its_file_on_keyboard_interrupt(tmp_path):
    target = tmp_path / "new.txt"
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise KeyboardInterrupt
    assert not target.exists() and _leftovers(tmp_path, "new.txt") == []


def test_atomic_path_suffix(tmp_path):
    with atomic_path(tmp_path / "fig.png") as tmp:  # the target's suffix by default (savefig infers the format)
        assert tmp.suffix == ".png"
        tmp.write_bytes(b"x")
    with atomic_path(tmp_path / "arrays.npz", suffix=".tmp") as tmp:
        assert tmp.name.endswith(".tmp") and not tmp.name.endswith(".npz")
        tmp.write_bytes(b"y")
    with atomic_path(tmp_path / "model.pt", suffix="") as tmp:
        assert not tmp.name.endswith(".pt")
        tmp.write_bytes(b"z")
    assert (tmp_path / "arrays.npz").read_bytes() == b"y" and (tmp_path / "model.pt").read_bytes() == b"z"


# ----------------------------------------------------------------------------- JSON
def test_json_round_trip_with_numpy_and_paths(tmp_path):
    obj = {"b": [1, 2.5, None, True], "a": {"nested": "x"}, "f32": np.float32(0.5), "i64": np.int64(7),
           "arr": np.arange(4, dtype=np.int32).reshape(2, 2), "path": Path("/tmp/x"), "flag": np.bool_(True)}
    write_json(tmp_path / "o.json", obj)
    back = read_json(tmp_path / "o.json")
    assert back == {"b": [1, 2.5, None, True], "a": {"nested": "x"}, "f32": 0.5, "i64": 7,
                    "arr": [[0, 1], [2, 3]], "path": "/tmp/x", "flag": True}
    assert isinstance(back["i64"], int) and isinstance(back["f32"], float)
    text = (tmp_path / "o.json").read_text()
    assert text.endswith("\n") and text.index('"a"') < text.index('"b"')  # sorted keys, indented
    assert json.loads(text) == back


def test_write_json_torch_tensor_is_refused_and_leaves_no_file(tmp_path):
    """``_json_default`` knows numpy and paths, not torch: a tensor raises TypeError naming its type."""
    import torch

    target = tmp_path / "t.json"
    with pytest.raises(TypeError, match="Tensor"):
        write_json(target, {"loss": torch.tensor(0.25)})
    assert not target.exists() and _leftovers(tmp_path, "t.json") == []
    write_json(target, {"loss": torch.tensor(0.25).item()})  # the documented way: a python number
    assert read_json(target) == {"loss": 0.25}


def test_write_json_unknown_object_raises_type_error(tmp_path):
    with pytest.raises(TypeError, match="cannot serialise object"):
        write_json(tmp_path / "o.json", {"x": object()})


def test_read_json_truncated_file_names_the_file(tmp_path):
    path = tmp_path / "headline.json"
    write_json(path, {"a": 1.0, "b": [1, 2, 3]})
    path.write_text(path.read_text()[:-8])  # a half-written file
    with pytest.raises(ValueError, match=r"file '.*headline\.json' is not valid JSON"):
        read_json(path)
    path.write_text("")
    with pytest.raises(ValueError, match="headline.json"):
        read_json(path)


def test_read_json_missing_file_names_the_file(tmp_path):
    with pytest.raises(ValueError, match=r"file '.*nowhere\.json' does not exist"):
        read_json(tmp_path / "nowhere.json")
    (tmp_path / "folder.json").mkdir()  # a folder is not a file either
    with pytest.raises(ValueError, match="does not exist"):
        read_json(tmp_path / "folder.json")


# ----------------------------------------------------------------------------- CSV and text
def _read_csv(path: Path) -> list[list[str]]:
    with open(path, newline="") as fh:
        return list(csv.reader(fh))


def test_write_csv_header_from_first_row_and_missing_cells_empty(tmp_path):
    path = tmp_path / "t" / "rows.csv"
    write_csv(path, [{"model": "dko", "abs_rel": 0.1}, {"abs_rel": 0.2, "model": "e2e", "extra": "dropped"}])
    assert _read_csv(path) == [["model", "abs_rel"], ["dko", "0.1"], ["e2e", "0.2"]]
    write_csv(path, [{"a": 1}], columns=["b", "a"])
    assert _read_csv(path) == [["b", "a"], ["", "1"]]


def test_write_csv_without_rows(tmp_path):
    write_csv(tmp_path / "empty.csv", [])
    assert (tmp_path / "empty.csv").read_text().strip() == ""
    write_csv(tmp_path / "header.csv", [], columns=["x", "y"])
    assert _read_csv(tmp_path / "header.csv") == [["x", "y"]]


def test_write_text_replaces_atomically(tmp_path):
    path = tmp_path / "notes" / "a.md"
    write_text(path, "first\n")
    write_text(path, "second\n")
    assert path.read_text() == "second\n" and _leftovers(path.parent, "a.md") == []

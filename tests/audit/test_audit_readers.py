"""Input collection: folders, globs, file lists, CSV/Parquet manifests, duplicates and exclusions."""
from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from onnx_gradcam.audit.readers import InputItem, collect_inputs
from onnx_gradcam.errors import InputError


@pytest.fixture
def tree(tmp_path):
    for relative in ["a/1.png", "a/b/2.JPG", "a/b/c/3.webp", "a/notes.txt", "a/.hidden.png", "a/.cache/4.png",
                     "top.png"]:
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    return tmp_path


def paths(items):
    return [os.path.relpath(item.path) for item in items]


def test_folder_is_scanned_recursively_for_image_suffixes_in_sorted_order(tree, monkeypatch):
    monkeypatch.chdir(tree)
    assert paths(collect_inputs(["a"])) == ["a/1.png", "a/b/2.JPG", "a/b/c/3.webp"]


def test_glob_expands_files_and_scans_matched_folders(tree, monkeypatch):
    monkeypatch.chdir(tree)
    assert paths(collect_inputs(["*.png", "a/b*"])) == ["top.png", "a/b/2.JPG", "a/b/c/3.webp"]
    assert paths(collect_inputs(["a/**/*.webp"])) == ["a/b/c/3.webp"]
    with pytest.raises(InputError, match="matches no file"):
        collect_inputs(["nothing/*.png"])


def test_file_list_paths_are_relative_to_the_list_and_skip_comments(tree, monkeypatch):
    (tree / "a" / "list.txt").write_text("# images\n1.png\n\nb/2.JPG\n  \n/abs/elsewhere.png\n")
    monkeypatch.chdir(tree)
    items = collect_inputs(["a/list.txt"])
    assert paths(items)[:2] == ["a/1.png", "a/b/2.JPG"]
    assert items[2].path == "/abs/elsewhere.png"


def test_csv_manifest_reads_path_and_label_columns(tree, monkeypatch):
    (tree / "a" / "manifest.csv").write_text("Filename,label,extra\n1.png,cat,x\nb/2.JPG,,y\n")
    monkeypatch.chdir(tree)
    items = collect_inputs(["a/manifest.csv"])
    assert paths(items) == ["a/1.png", "a/b/2.JPG"]
    assert [item.label for item in items] == ["cat", None]


def test_parquet_manifest_reads_path_and_label_columns(tree, monkeypatch):
    pq.write_table(pa.table({"image_path": ["1.png", "b/2.JPG"], "class": [3, 7]}), tree / "a" / "m.parquet")
    monkeypatch.chdir(tree)
    items = collect_inputs(["a/m.parquet"])
    assert paths(items) == ["a/1.png", "a/b/2.JPG"]
    assert [item.label for item in items] == ["3", "7"]


def test_manifest_without_a_path_column_is_a_usage_error(tmp_path):
    (tmp_path / "m.csv").write_text("name,label\nx.png,1\n")
    with pytest.raises(InputError, match="no path column"):
        collect_inputs([str(tmp_path / "m.csv")])


def test_the_same_path_listed_twice_gives_one_item_with_the_first_label(tree, monkeypatch):
    (tree / "m.csv").write_text("path,label\na/1.png,first\n./a/../a/1.png,second\n")
    monkeypatch.chdir(tree)
    items = collect_inputs(["a/1.png", "m.csv", "a"])
    assert paths(items) == ["a/1.png", "a/b/2.JPG", "a/b/c/3.webp"]
    assert items[0] == InputItem(str(tree / "a" / "1.png"), None)


def test_missing_plain_paths_are_kept_for_the_records_and_the_output_folder_is_skipped(tree, monkeypatch):
    monkeypatch.chdir(tree)
    items = collect_inputs(["a", "gone.png"], exclude=tree / "a" / "b")
    assert paths(items) == ["a/1.png", "gone.png"]

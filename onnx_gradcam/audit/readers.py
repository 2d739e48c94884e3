"""Audit inputs: folders (recursive), globs, file lists and CSV/Parquet manifests, as one ordered list."""
from __future__ import annotations

import csv
import glob
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

from ..errors import InputError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm",
                            ".pbm", ".pnm", ".jp2", ".exr", ".hdr", ".pic", ".sr", ".ras", ".avif"})
LIST_SUFFIXES = frozenset({".txt", ".lst", ".list"})
MANIFEST_SUFFIXES = frozenset({".csv", ".parquet", ".pq"})
PATH_COLUMNS = ("path", "image_path", "filepath", "file_path", "file", "filename", "image")
LABEL_COLUMNS = ("label", "class", "target", "y")


@dataclass(frozen=True)
class InputItem:
    """One image to audit: its absolute path and the label a manifest gave it (None when unknown)."""

    path: str
    label: Optional[str] = None


def collect_inputs(inputs: Sequence[str], exclude: Optional[os.PathLike] = None) -> list[InputItem]:
    """Return the images named by inputs in order, each path once (the first label listed wins).

    A folder is scanned recursively for image suffixes; a glob is expanded (folders it matches are
    scanned); .txt/.lst/.list files list one path per line; .csv/.parquet manifests have a path column
    and an optional label column. Relative paths in lists and manifests are relative to that file.
    A plain path is kept even if it does not exist: the audit records why it could not be read.
    Folder scans and globs skip what lies under exclude (the audit's own output folder).
    """
    excluded = os.path.abspath(exclude) if exclude is not None else None
    seen: dict[str, InputItem] = {}
    for item in _expand(inputs, excluded):
        seen.setdefault(item.path, item)
    return list(seen.values())


def _expand(inputs: Sequence[str], excluded: Optional[str]) -> Iterable[InputItem]:
    for entry in inputs:
        entry = os.fspath(entry)
        suffix = Path(entry).suffix.lower()
        if os.path.isdir(entry):
            yield from _scan_folder(entry, excluded)
        elif glob.has_magic(entry) and not os.path.exists(entry):
            matches = sorted(glob.glob(entry, recursive=True))
            if not matches:
                raise InputError(f"the pattern {entry!r} matches no file")
            for match in matches:
                if os.path.isdir(match):
                    yield from _scan_folder(match, excluded)
                elif not _inside(os.path.abspath(match), excluded):
                    yield _item(match)
        elif suffix in LIST_SUFFIXES and os.path.isfile(entry):
            yield from read_file_list(entry)
        elif suffix in MANIFEST_SUFFIXES and os.path.isfile(entry):
            yield from read_manifest(entry)
        else:
            yield _item(entry)


def _item(path: str, label: Optional[str] = None, base: Optional[str] = None) -> InputItem:
    if base is not None and not os.path.isabs(path):
        path = os.path.join(base, path)
    return InputItem(os.path.abspath(path), label)


def _inside(path: str, folder: Optional[str]) -> bool:
    return folder is not None and (path == folder or path.startswith(folder + os.sep))


def _scan_folder(folder: str, excluded: Optional[str] = None) -> Iterable[InputItem]:
    """Image files under folder in sorted order; symlinked folders are not followed (no loops)."""
    found = []
    for root, dirs, files in os.walk(folder):
        if _inside(os.path.abspath(root), excluded):
            dirs[:] = []
            continue
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found.extend(os.path.join(root, name) for name in files
                     if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES)
    return [_item(path) for path in sorted(found)]


def read_file_list(path: str) -> list[InputItem]:
    """Paths listed one per line (blank lines and '#' comments skipped), relative to the list's folder."""
    base = os.path.dirname(os.path.abspath(path))
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"cannot read the file list {path}: {error}") from error
    return [_item(line.strip(), base=base) for line in lines if line.strip() and not line.lstrip().startswith("#")]


def read_manifest(path: str) -> list[InputItem]:
    """Rows of a CSV or Parquet manifest: a path column (path, file, filename, image...) and optional label."""
    rows = _read_parquet(path) if Path(path).suffix.lower() in (".parquet", ".pq") else _read_csv(path)
    columns = {name.strip().lower(): name for name in (rows[0].keys() if rows else [])}
    path_column = next((columns[c] for c in PATH_COLUMNS if c in columns), None)
    if path_column is None:
        raise InputError(f"the manifest {path} has no path column: name one of {', '.join(PATH_COLUMNS)} "
                         f"(it has {', '.join(columns.values()) or 'no columns'})")
    label_column = next((columns[c] for c in LABEL_COLUMNS if c in columns), None)
    base = os.path.dirname(os.path.abspath(path))
    items = []
    for row in rows:
        value = row[path_column]
        if value is None or str(value).strip() == "":
            continue
        label = row.get(label_column) if label_column else None
        label = None if label is None or str(label).strip() == "" else str(label).strip()
        items.append(_item(str(value).strip(), label, base))
    return items


def _read_csv(path: str) -> list[dict]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            return list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise InputError(f"cannot read the manifest {path}: {error}") from error


def _read_parquet(path: str) -> list[dict]:
    try:
        import pyarrow.parquet as pq
    except ImportError as error:
        raise InputError("Parquet manifests need pyarrow: pip install 'onnx-gradcam[audit]'") from error
    try:
        return pq.read_table(path).to_pylist()
    except Exception as error:  # pyarrow raises several unrelated types for a bad file
        raise InputError(f"cannot read the Parquet manifest {path}: {error}") from error

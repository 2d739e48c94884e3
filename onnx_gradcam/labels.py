"""Class-name files: one label per line, a JSON list, or a JSON object {index: name}."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional, Union

from .errors import InputError


def load_labels(path: Optional[Union[str, os.PathLike]]) -> Optional[list[str]]:
    """Return the class names in a labels file (None when path is None)."""
    if path is None:
        return None
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise InputError(f"cannot read labels file {path}: {error}") from error
    if path.suffix.lower() == ".json":
        data = json.loads(text)
        if isinstance(data, dict):
            return [str(data[key]) for key in sorted(data, key=int)]
        return [str(item) for item in data]
    return [line.strip() for line in text.splitlines() if line.strip()]


def label_name(labels: Optional[list[str]], index: int) -> str:
    """The name of class index, or the index itself when no name is known."""
    if labels is not None and 0 <= index < len(labels):
        return labels[index]
    return str(index)

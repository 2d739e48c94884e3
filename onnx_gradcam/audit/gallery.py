"""Report galleries: which records to show, and their overlay tiles (re-explained, so no saved files are needed)."""
from __future__ import annotations

import base64
from typing import Optional

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..render import overlay
from .config import AuditConfig, AuditModel
from .decode import fit_within
from .readers import InputItem
from .worker import AuditWorker

GALLERY_SIZE = 24
TILE_SIDE = 160


def select_galleries(table: pa.Table, size: int = GALLERY_SIZE) -> dict[str, list[dict]]:
    """The rows of the three galleries: most confident, misclassified (most confident first), least focused."""
    ok = table.filter(pc.equal(table["status"], "ok"))
    wrong = ok.filter(pc.equal(ok["correct"], False))

    def top(rows: pa.Table, column: str) -> list[dict]:
        """The size rows with the largest column values (ties by path)."""
        return rows.sort_by([(column, "descending"), ("path", "ascending")]).slice(0, size).to_pylist()

    return {"most confident": top(ok, "probability"), "misclassified": top(wrong, "probability"),
            "least focused": top(ok, "entropy")}


def render_tiles(rows: list[dict], config: AuditConfig, model: AuditModel) -> dict[str, str]:
    """Data URIs of heatmap overlays for the rows' images, keyed by path (an image unreadable now is left out)."""
    unique = list({row["path"]: row for row in rows}.values())
    if not unique:
        return {}
    worker = AuditWorker(config, model, thumbnails=True)
    decoded = [worker.decode(InputItem(row["path"])) for row in unique]
    explained = worker.explain(decoded, classes=[row["explained_class"] for row in unique])
    return {unique[index]["path"]: tile_uri(overlay(decoded[index].thumbnail, explained.heatmaps[position]))
            for position, index in enumerate(explained.positions)}


def tile_uri(image: np.ndarray, side: int = TILE_SIDE) -> Optional[str]:
    """A data: URI of image fitted to side pixels (small images enlarged by whole pixels, so they stay sharp)."""
    height, width = image.shape[:2]
    if max(height, width) < side:
        factor = max(1, side // max(height, width))
        image = cv2.resize(image, (width * factor, height * factor), interpolation=cv2.INTER_NEAREST)
    image = cv2.cvtColor(fit_within(image, side), cv2.COLOR_RGB2BGR)
    small = max(height, width) <= 64  # tiny images compress better and stay exact as PNG
    ok, data = cv2.imencode(".png" if small else ".jpg", image, [] if small else [cv2.IMWRITE_JPEG_QUALITY, 85])
    if not ok:
        return None
    mime = "image/png" if small else "image/jpeg"
    return f"data:{mime};base64,{base64.b64encode(data.tobytes()).decode()}"

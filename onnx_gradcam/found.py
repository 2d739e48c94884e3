"""Explaining what a model's own forward pass finds (boxes, masks, top classes) with that pass run once.

On a seed=True model the seeds are made from the score: the boxes a detector finds, the pixels a
segmenter paints, each image's top class. The model is split (graph.split) into a forward part, run
once per chunk of images, and a reverse part, run on rows of the values the forward part saved: one
row per thing explained, an image repeated once per box. A model the split cannot handle runs as one
graph instead: the forward pass to find the rows, then the whole graph on the repeated images.
"""
from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional, Sequence

import numpy as np

from .arrays import array_module, host
from .graph.augment import LOGITS, SEED
from .graph.split import SeededSplit

if TYPE_CHECKING:
    from .explainer import Explainer
    from .runtime import Session

# find(start, score) -> (image index [R] into the chunk, seeds(rows: slice) -> seeds [r, ...] of those rows):
# what to explain in a chunk of images starting at batch index start, from the chunk's score tensor (host).
# Seeds are made a run at a time: one detection seed is a whole head (2.8 MB for YOLOv8 at 640).
Finder = Callable[[int, np.ndarray], "tuple[np.ndarray, Callable[[slice], Any]]"]


class SplitSessions:
    """The forward and reverse sessions of a split seeded model."""

    def __init__(self, split: SeededSplit, make_session: Callable[[Any], "Session"]) -> None:
        self.split = split
        self.forward = make_session(split.forward)
        self.reverse = make_session(split.reverse)


def found_rows(explainer: "Explainer", batch, find: Finder, outputs: Optional[Sequence[str]],
               progress: bool = False,
               explain_rows: Optional[Callable[[Any, Any], dict]] = None) -> Iterator[tuple[np.ndarray, dict]]:
    """Yield (batch index [r] of each row's image, the rows' outputs) for what find picks in each chunk.

    outputs: what each row needs (activations, gradients, gradcam_score); the chunk's score goes to find.
    Rows come batch_size at a time, in the order find lists them, chunk after chunk. explain_rows(images,
    seeds), for methods that run passes of their own, replaces the runs: the forward pass then only finds.
    """
    size = explainer.batch_size
    starts = range(0, len(batch), size)
    if progress:
        from tqdm import tqdm
        starts = tqdm(starts, unit="batch", desc="explain")
    for start in starts:
        images = batch[start:start + size]
        sessions = None if explain_rows else explainer.split_sessions(outputs)
        forward = None if sessions is None else _run_forward(explainer, sessions, images)
        if forward is None:
            score = explainer._forward(images)
        else:
            score = host(forward[LOGITS])
        image_index, seeds = find(start, score)
        image_index = np.asarray(image_index, np.int64)
        for row_start in range(0, len(image_index), size):
            rows = slice(row_start, row_start + size)
            index, row_seeds = image_index[rows], seeds(rows)
            if explain_rows is not None:
                result = explain_rows(_rows(images, index), row_seeds)
            elif forward is None:
                result = _run_whole(explainer, images, index, row_seeds, outputs)
            else:
                result = _run_reverse(explainer, sessions, forward, index, row_seeds, outputs)
            yield start + index, result


def _run_forward(explainer: "Explainer", sessions: SplitSessions, images) -> dict | None:
    """The forward part's outputs for a chunk of images, or None (and the split dropped) when a saved tensor
    does not have a row per image after all."""
    split = sessions.split
    names = list(dict.fromkeys([*split.forward_outputs, *split.saved]))
    count = len(images)
    fed = images
    if explainer.static_batch and count < explainer.static_batch:
        fed, _ = explainer._padded(images, None)
    result = explainer._run_fitting(sessions.forward, {explainer.input_name: fed}, names)
    wrong = [name for name in split.saved if result[name].shape[:1] != (len(fed),)]
    if wrong:
        warnings.warn(f"the seeded model's split saved {wrong[0]!r} with shape {list(result[wrong[0]].shape)} "
                      f"for {len(fed)} images; explaining with the whole graph instead", RuntimeWarning)
        explainer.drop_split()
        return None
    return {name: value[:count] for name, value in result.items()} if len(fed) > count else result


def _run_reverse(explainer: "Explainer", sessions: SplitSessions, forward: dict, index: np.ndarray, seeds,
                 outputs: Sequence[str]) -> dict:
    """The rows' outputs: the reverse part on the saved values of their images, forward outputs taken by row."""
    split = sessions.split
    count = len(index)
    fed_index, seeds = _pad_rows(explainer, index, seeds)
    feeds = {name: _rows(forward[name], fed_index) for name in split.saved}
    feeds[SEED] = seeds
    wanted = [name for name in outputs if name in split.reverse_outputs]
    result = explainer._run_fitting(sessions.reverse, feeds, wanted)
    result = {name: value[:count] for name, value in result.items()}
    result.update({name: _rows(forward[name], index) for name in outputs if name not in split.reverse_outputs})
    return result


def _run_whole(explainer: "Explainer", images, index: np.ndarray, seeds, outputs: Sequence[str]) -> dict:
    """The rows' outputs from the whole seeded graph, on the rows' images."""
    count = len(index)
    fed_index, seeds = _pad_rows(explainer, index, seeds)
    session = explainer._session(outputs)
    result = explainer._run_fitting(session, {explainer.input_name: _rows(images, fed_index), SEED: seeds},
                                    list(outputs))
    return {name: value[:count] for name, value in result.items()}


def _pad_rows(explainer: "Explainer", index: np.ndarray, seeds):
    """index and seeds padded to a model's fixed batch: the first row repeated with a zero seed."""
    missing = (explainer.static_batch or 0) - len(index)
    if missing <= 0:
        return index, seeds
    xp = array_module(seeds)
    index = np.concatenate([index, np.full(missing, index[0], np.int64)])
    return index, xp.concatenate([seeds, xp.zeros((missing,) + seeds.shape[1:], seeds.dtype)])


def _rows(value, index: np.ndarray):
    """value's rows at index (value itself when index takes every row in order)."""
    if len(index) == len(value) and np.array_equal(index, np.arange(len(value))):
        return value
    xp = array_module(value)
    return xp.take(value, xp.asarray(index), axis=0)

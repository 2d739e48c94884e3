"""Rules of linear-algebra ops."""
from __future__ import annotations

import numpy as np

from ...errors import UnsupportedOpError
from .common import attr, swap_last_two, unbroadcast
from .registry import rule


def _broadcast_dim(first, second):
    """The broadcast of two dims (int, symbolic name or None)."""
    if first == 1:
        return second
    if second == 1 or first == second:
        return first
    return first if isinstance(first, int) and isinstance(second, int) else None


def _batch_shape(*shapes: list) -> list:
    """The broadcast batch dims (all but the last two) of matrix operands' shapes."""
    rank = max(len(shape) for shape in shapes) - 2
    batch = [1] * rank
    for shape in shapes:
        lead = shape[:-2]
        for index, dim in enumerate(lead, rank - len(lead)):
            batch[index] = _broadcast_dim(batch[index], dim)
    return batch


@rule("MatMul")
def _matmul(node, grads, needed, b):
    # Y = A @ C: dA = dY @ C^T and dC = A^T @ dY, each summed over the batch axes its operand was
    # broadcast along. A 1-D operand is a row (A) or column (C) vector whose axis Y drops.
    a, c = node.input
    rank_a, rank_c = b.rank(a), b.rank(c)
    if rank_a is None or rank_c is None:
        raise UnsupportedOpError(f"MatMul {node.name!r}: the rank of an operand is unknown")
    grad = grads[0]
    a_matrix, c_matrix = a, c
    if rank_a == 1:
        a_matrix = b.unsqueeze(a, [0])
        b.note_shape(a_matrix, [1] + b.shapes[a], b.dtype(a))
    if rank_c == 1:
        c_matrix = b.unsqueeze(c, [1])
        b.note_shape(c_matrix, b.shapes[c] + [1], b.dtype(c))
    if rank_a == 1 and rank_c == 1:
        grad = b.op("Reshape", grad, b.const([1, 1], np.int64))
    elif rank_a == 1:
        grad = b.unsqueeze(grad, [-2])
    elif rank_c == 1:
        grad = b.unsqueeze(grad, [-1])
    a_shape, c_shape = b.shapes[a_matrix], b.shapes[c_matrix]
    y_matrix = b.name("matmul_result")  # the shape Y has with both operands as matrices
    b.note_shape(y_matrix, _batch_shape(a_shape, c_shape) + [a_shape[-2], c_shape[-1]])
    grad_a = grad_c = None
    if needed[0]:
        grad_a = unbroadcast(b, b.op("MatMul", grad, swap_last_two(b, c_matrix)), a_matrix, y_matrix)
        grad_a = b.squeeze(grad_a, [0]) if rank_a == 1 else grad_a
    if needed[1]:
        grad_c = unbroadcast(b, b.op("MatMul", swap_last_two(b, a_matrix), grad), c_matrix, y_matrix)
        grad_c = b.squeeze(grad_c, [-1]) if rank_c == 1 else grad_c
    return [grad_a, grad_c]


ELLIPSIS = "..."


def _terms(equation: str) -> list[list[str]]:
    """The subscripts of an Einsum equation, each a list of letters and "..." (output last, made explicit)."""
    equation = equation.replace(" ", "")
    inputs, arrow, output = equation.partition("->")
    terms = [_letters(term) for term in inputs.split(",")]
    if not arrow:  # implicit output: letters used once, in alphabetical order, after any ellipsis
        used = [letter for term in terms for letter in term if letter != ELLIPSIS]
        output = ("..." if any(ELLIPSIS in term for term in terms) else "") + "".join(
            sorted(letter for letter in set(used) if used.count(letter) == 1))
    return terms + [_letters(output)]


def _letters(term: str) -> list[str]:
    head, dots, tail = term.partition(ELLIPSIS)
    return list(head) + ([ELLIPSIS] if dots else []) + list(tail)


@rule("Einsum")
def _einsum(node, grads, needed, b):
    # The gradient of operand i is an Einsum of the output gradient with the other operands, into
    # operand i's subscripts. Ellipses become explicit letters (ONNX Runtime needs the same ellipsis
    # rank in every operand); letters only operand i has were summed over: their gradient is
    # broadcast back with Expand; axes an operand was broadcast along are summed back.
    equation = attr(node, "equation")
    equation = equation.decode() if isinstance(equation, bytes) else equation
    operands = list(node.input)
    terms = _terms(equation)
    ranks = [b.rank(name) for name in operands]
    if any(rank is None for rank in ranks):
        raise UnsupportedOpError(f"Einsum {node.name!r}: the rank of an operand is unknown")
    spare = [letter for letter in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
             if letter not in equation]
    ellipsis_rank = max([rank - len(term) + 1 for term, rank in zip(terms, ranks) if ELLIPSIS in term], default=0)
    batch = spare[:ellipsis_rank]
    explicit = []
    for index, term in enumerate(terms):
        if ELLIPSIS in term:
            rank = ranks[index] if index < len(operands) else ellipsis_rank + len(term) - 1
            count = rank - len(term) + 1
            at = term.index(ELLIPSIS)
            term = term[:at] + (batch[ellipsis_rank - count:] if count else []) + term[at + 1:]
        explicit.append(term)
    *inputs, output = explicit
    sizes: dict[str, object] = {}  # each letter's dim: the broadcast of its dims in every operand
    for term, name in zip(inputs, operands):
        shape = b.shapes.get(name) or [None] * len(term)
        for letter, dim in zip(term, shape):
            sizes[letter] = _broadcast_dim(sizes[letter], dim) if letter in sizes else dim
    result = []
    for index, (term, name) in enumerate(zip(inputs, operands)):
        if not needed[index]:
            result.append(None)
            continue
        if len(set(term)) < len(term):
            raise UnsupportedOpError(
                f"Einsum {node.name!r}: operand {index} ({name!r}) repeats a subscript in {equation!r} "
                "(a diagonal); its gradient is not supported")
        others = [other for position, other in enumerate(inputs) if position != index]
        reached = set(output).union(*others)
        kept = [letter for letter in term if letter in reached]
        grad = b.op("Einsum", grads[0], *(n for position, n in enumerate(operands) if position != index),
                    equation=",".join("".join(t) for t in [output] + others) + "->" + "".join(kept))
        if len(kept) < len(term):
            lonely = [position for position, letter in enumerate(term) if letter not in reached]
            grad = b.op("Expand", b.unsqueeze(grad, lonely), b.shape(name))
        if not any(letter in batch for letter in term):
            result.append(grad)  # only ellipsis axes broadcast
            continue
        shape = b.shapes.get(name) or [None] * len(term)
        broadcast = b.name("einsum_broadcast")  # the shape the gradient has before summing back
        b.note_shape(broadcast, [sizes[letter] if letter in batch else dim for letter, dim in zip(term, shape)])
        result.append(unbroadcast(b, grad, name, broadcast))
    return result


@rule("Gemm")
def _gemm(node, grads, needed, b):
    a, c = node.input[:2]
    alpha, beta = attr(node, "alpha", 1.0), attr(node, "beta", 1.0)
    trans_a, trans_b = attr(node, "transA", 0), attr(node, "transB", 0)
    grad = grads[0]
    result = [None] * len(node.input)
    if needed[0]:
        # dA' = alpha * dY @ B'^T, and dA = dA'^T when A was transposed.
        result[0] = (b.op("Gemm", c, grad, alpha=alpha, transA=trans_b, transB=1) if trans_a
                     else b.op("Gemm", grad, c, alpha=alpha, transB=1 - trans_b))
    if needed[1]:
        result[1] = (b.op("Gemm", grad, a, alpha=alpha, transA=1, transB=trans_a) if trans_b
                     else b.op("Gemm", a, grad, alpha=alpha, transA=1 - trans_a))
    if len(node.input) > 2 and node.input[2] and needed[2]:
        scaled = b.op("Mul", grad, b.scalar_like(beta, grad))
        result[2] = unbroadcast(b, scaled, node.input[2], node.output[0])
    return result

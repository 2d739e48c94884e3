"""Rules of linear-algebra ops."""
from __future__ import annotations

from ...errors import UnsupportedOpError
from .common import attr, swap_last_two, unbroadcast
from .registry import rule


@rule("MatMul")
def _matmul(node, grads, needed, b):
    a, c = node.input
    if (b.rank(a) or 0) < 2 or (b.rank(c) or 0) < 2:
        raise UnsupportedOpError(f"MatMul {node.name!r}: 1-D or unknown-rank operands are not supported")
    grad_a = grad_c = None
    if needed[0]:
        grad_a = unbroadcast(b, b.op("MatMul", grads[0], swap_last_two(b, c)), a, node.output[0])
    if needed[1]:
        grad_c = unbroadcast(b, b.op("MatMul", swap_last_two(b, a), grads[0]), c, node.output[0])
    return [grad_a, grad_c]


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

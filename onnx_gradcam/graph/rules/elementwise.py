"""Rules of elementwise ops: arithmetic, activations, casts and identities."""
from __future__ import annotations

from .blocked_layout import relu_mask
from .common import attr, masked, unbroadcast
from .registry import GUIDED_RULES, rule


@rule("Identity", "Dropout", layout_preserving=True)
def _identity(node, grads, needed, b):
    return [grads[0]]


@rule("Cast", layout_preserving=True)
def _cast(node, grads, needed, b):
    return [b.cast(grads[0], b.dtype(node.input[0]))]


@rule("Add", "Sum", layout_preserving=True)
def _add(node, grads, needed, b):
    return [unbroadcast(b, grads[0], x, node.output[0]) if need else None
            for x, need in zip(node.input, needed)]


@rule("Sub", layout_preserving=True)
def _sub(node, grads, needed, b):
    a, c = node.input
    return [unbroadcast(b, grads[0], a, node.output[0]) if needed[0] else None,
            unbroadcast(b, b.op("Neg", grads[0]), c, node.output[0]) if needed[1] else None]


@rule("Neg", layout_preserving=True)
def _neg(node, grads, needed, b):
    return [b.op("Neg", grads[0])]


@rule("Mul", layout_preserving=True)
def _mul(node, grads, needed, b):
    a, c = node.input
    return [unbroadcast(b, b.op("Mul", grads[0], c), a, node.output[0]) if needed[0] else None,
            unbroadcast(b, b.op("Mul", grads[0], a), c, node.output[0]) if needed[1] else None]


@rule("Div", layout_preserving=True)
def _div(node, grads, needed, b):
    a, c = node.input
    grad_a = grad_c = None
    if needed[0]:
        grad_a = unbroadcast(b, b.op("Div", grads[0], c), a, node.output[0])
    if needed[1]:
        minus = b.op("Neg", b.op("Div", b.op("Mul", grads[0], node.output[0]), c))
        grad_c = unbroadcast(b, minus, c, node.output[0])
    return [grad_a, grad_c]


@rule("Relu", layout_preserving=True)
def _relu(node, grads, needed, b):
    return [b.op("Mul", grads[0], relu_mask(b, node.output[0]))]


def _guided_relu(node, grads, needed, b):
    """Guided backpropagation: only positive gradients pass back through a ReLU."""
    return [b.op("Mul", b.op("Relu", grads[0]), relu_mask(b, node.output[0]))]


GUIDED_RULES["Relu"] = _guided_relu


@rule("LeakyRelu", layout_preserving=True)
def _leaky_relu(node, grads, needed, b):
    x = node.input[0]
    alpha = attr(node, "alpha", 0.01)
    positive = b.cast(b.op("Greater", x, b.scalar_like(0.0, x)), b.dtype(x))
    slope = b.op("Add", b.op("Mul", positive, b.scalar_like(1.0 - alpha, x)), b.scalar_like(alpha, x))
    return [b.op("Mul", grads[0], slope)]


@rule("Clip", layout_preserving=True)
def _clip(node, grads, needed, b):
    x = node.input[0]
    low = node.input[1] if len(node.input) > 1 and node.input[1] else None
    high = node.input[2] if len(node.input) > 2 and node.input[2] else None
    if b.opset < 11:
        low, high = b.scalar_like(attr(node, "min", -3.4e38), x), b.scalar_like(attr(node, "max", 3.4e38), x)
    inside = None
    for bound, compare in ((low, "Greater"), (high, "Less")):
        if bound is not None:
            test = b.op(compare, x, bound)
            inside = test if inside is None else b.op("And", inside, test)
    result = [grads[0] if inside is None else masked(b, inside, grads[0]), None, None]
    for index, bound, compare in ((1, low, "Less"), (2, high, "Greater")):
        if bound is not None and b.opset >= 11 and len(needed) > index and needed[index]:
            clipped = masked(b, b.op(compare, x, bound), grads[0])
            result[index] = unbroadcast(b, clipped, bound, node.output[0])
    return result


@rule("Sigmoid", layout_preserving=True)
def _sigmoid(node, grads, needed, b):
    y = node.output[0]
    slope = b.op("Mul", y, b.op("Sub", b.scalar_like(1.0, y), y))
    return [b.op("Mul", grads[0], slope)]


@rule("Tanh", layout_preserving=True)
def _tanh(node, grads, needed, b):
    y = node.output[0]
    return [b.op("Mul", grads[0], b.op("Sub", b.scalar_like(1.0, y), b.op("Mul", y, y)))]


@rule("HardSigmoid", layout_preserving=True)
def _hard_sigmoid(node, grads, needed, b):
    y = node.output[0]
    inside = b.op("And", b.op("Greater", y, b.scalar_like(0.0, y)), b.op("Less", y, b.scalar_like(1.0, y)))
    scaled = b.op("Mul", grads[0], b.scalar_like(attr(node, "alpha", 0.2), y))
    return [masked(b, inside, scaled)]


@rule("HardSwish", layout_preserving=True)
def _hard_swish(node, grads, needed, b):
    # d/dx x*relu6(x+3)/6 = 0 below -3, x/3 + 1/2 up to 3, 1 above (PyTorch's convention at the kinks).
    x = node.input[0]
    middle = b.op("Add", b.op("Div", x, b.scalar_like(3.0, x)), b.scalar_like(0.5, x))
    above = b.op("Greater", x, b.scalar_like(3.0, x))
    inside = b.op("Not", b.op("Or", b.op("Less", x, b.scalar_like(-3.0, x)), above))
    slope = b.op("Add", masked(b, inside, middle), b.cast(above, b.dtype(x)))
    return [b.op("Mul", grads[0], slope)]


@rule("Shape", "Size", "ArgMax", "ArgMin", "NonZero", "Equal", "Greater", "Less", "GreaterOrEqual",
      "LessOrEqual", "Not", "And", "Or", "Xor", "IsNaN", "IsInf", "ConstantOfShape", "Range", "EyeLike",
      "RandomNormalLike", "RandomUniformLike", "Floor", "Ceil", "Round", "Sign", "OneHot", "TopK",
      differentiable=False)
def _no_gradient(node, grads, needed, b):
    """Shape arithmetic, comparisons and indices: their outputs carry no gradient."""
    return [None] * len(node.input)

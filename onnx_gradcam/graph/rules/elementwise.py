"""Rules of elementwise ops: arithmetic, activations, casts and identities."""
from __future__ import annotations

import math

import numpy as np
from onnx import helper

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


@rule("Sqrt", layout_preserving=True)
def _sqrt(node, grads, needed, b):
    y = node.output[0]
    return [b.op("Div", grads[0], b.op("Add", y, y))]


@rule("Reciprocal", layout_preserving=True)
def _reciprocal(node, grads, needed, b):
    y = node.output[0]
    return [b.op("Neg", b.op("Mul", grads[0], b.op("Mul", y, y)))]


@rule("Exp", layout_preserving=True)
def _exp(node, grads, needed, b):
    return [b.op("Mul", grads[0], node.output[0])]


@rule("Log", layout_preserving=True)
def _log(node, grads, needed, b):
    return [b.op("Div", grads[0], node.input[0])]


@rule("Abs", layout_preserving=True)
def _abs(node, grads, needed, b):
    return [b.op("Mul", grads[0], b.op("Sign", node.input[0]))]  # 0 at 0, as torch


@rule("Erf", layout_preserving=True)
def _erf(node, grads, needed, b):
    x = node.input[0]
    density = b.op("Exp", b.op("Neg", b.op("Mul", x, x)))
    return [b.op("Mul", grads[0], b.op("Mul", density, b.scalar_like(2 / math.sqrt(math.pi), x)))]


@rule("Pow", layout_preserving=True)
def _pow(node, grads, needed, b):
    x, exponent = node.input
    y = node.output[0]
    grad_x = grad_exponent = None
    if needed[0]:
        value = b.constant_value(exponent)
        if value is not None and np.all(value == 2):  # x ** 2, the variance of a decomposed LayerNorm
            slope = b.op("Add", x, x)
        elif value is not None:
            value = value.astype(helper.tensor_dtype_to_np_dtype(b.dtype(x)))
            slope = b.op("Mul", b.op("Pow", x, b.const(value - 1)), b.const(value))
        else:  # the exponent may be an integer type (Pow-12 and later)
            power = exponent if b.dtype(exponent) == b.dtype(x) else b.cast(exponent, b.dtype(x))
            slope = b.op("Mul", b.op("Pow", x, b.op("Sub", power, b.scalar_like(1.0, x))), power)
        grad_x = unbroadcast(b, b.op("Mul", grads[0], slope), x, y)
    if needed[1]:
        # d/de x^e = x^e ln x: 0 where x = 0 (the limit for e > 0), NaN where x < 0, both as torch.
        rate = b.op("Where", b.op("Equal", x, b.scalar_like(0.0, x)), b.scalar_like(0.0, x),
                    b.op("Mul", y, b.op("Log", x)))
        grad = b.op("Mul", grads[0], rate)
        if b.dtype(exponent) != b.dtype(x):
            grad = b.cast(grad, b.dtype(exponent))
        grad_exponent = unbroadcast(b, grad, exponent, y)
    return [grad_x, grad_exponent]


@rule("Min", "Max", layout_preserving=True)
def _min_max(node, grads, needed, b):
    """The gradient goes to the inputs equal to the result, split evenly among ties.

    For two inputs this is torch.maximum / torch.minimum's convention (half each on a tie); among k
    tied inputs each gets 1/k, so the gradients always sum to the incoming one.
    """
    y = node.output[0]
    if len(node.input) == 1:
        return [grads[0]]
    hits = [b.cast(b.op("Equal", x, y), b.dtype(y)) for x in node.input]
    share = b.op("Div", grads[0], b.op("Sum", *hits))
    return [unbroadcast(b, b.op("Mul", share, hit), x, y) if need else None
            for x, hit, need in zip(node.input, hits, needed)]


@rule("Where", layout_preserving=True)
def _where(node, grads, needed, b):
    condition, a, c = node.input
    y = node.output[0]
    return [None,
            unbroadcast(b, masked(b, condition, grads[0]), a, y) if needed[1] else None,
            unbroadcast(b, masked(b, b.op("Not", condition), grads[0]), c, y) if needed[2] else None]


@rule("PRelu", layout_preserving=True)
def _prelu(node, grads, needed, b):
    # Slope 1 above 0, `slope` at and below it (torch's convention at 0); slope broadcasts to x.
    x, slope = node.input
    positive = b.cast(b.op("Greater", x, b.scalar_like(0.0, x)), b.dtype(x))
    negative = b.op("Sub", b.scalar_like(1.0, x), positive)
    grad_x = b.op("Mul", grads[0], b.op("Add", positive, b.op("Mul", negative, slope))) if needed[0] else None
    grad_slope = None
    if needed[1]:
        grad_slope = unbroadcast(b, b.op("Mul", grads[0], b.op("Mul", x, negative)), slope, node.output[0])
    return [grad_x, grad_slope]


def _exponential_linear(node, grads, b, alpha: float, gamma: float):
    """Gradient of gamma * (x if x > 0 else alpha * (exp(x) - 1)): gamma above 0, y + gamma * alpha below."""
    x, y = node.input[0], node.output[0]
    above = b.op("Greater", x, b.scalar_like(0.0, x))
    below = masked(b, b.op("Not", above), b.op("Add", y, b.scalar_like(gamma * alpha, x)))
    slope = b.op("Add", b.op("Mul", b.cast(above, b.dtype(x)), b.scalar_like(gamma, x)), below)
    return [b.op("Mul", grads[0], slope)]


@rule("Elu", layout_preserving=True)
def _elu(node, grads, needed, b):
    return _exponential_linear(node, grads, b, attr(node, "alpha", 1.0), 1.0)


@rule("Selu", layout_preserving=True)
def _selu(node, grads, needed, b):
    return _exponential_linear(node, grads, b, attr(node, "alpha", 1.67326319217681884765625),
                               attr(node, "gamma", 1.05070102214813232421875))


@rule("Softplus", layout_preserving=True)
def _softplus(node, grads, needed, b):
    return [b.op("Mul", grads[0], b.op("Sigmoid", node.input[0]))]


@rule("Mish", layout_preserving=True)
def _mish(node, grads, needed, b):
    # d/dx x tanh(softplus(x)) = tanh(sp) + x (1 - tanh(sp)^2) sigmoid(x); tanh(sp) = y / x fails at 0.
    x = node.input[0]
    squash = b.op("Tanh", b.op("Softplus", x))
    sech2 = b.op("Sub", b.scalar_like(1.0, x), b.op("Mul", squash, squash))
    slope = b.op("Add", squash, b.op("Mul", x, b.op("Mul", sech2, b.op("Sigmoid", x))))
    return [b.op("Mul", grads[0], slope)]


@rule("Gelu", layout_preserving=True)
def _gelu(node, grads, needed, b):
    x = node.input[0]
    approximate = attr(node, "approximate", b"none")
    approximate = approximate.decode() if isinstance(approximate, bytes) else approximate
    half = b.scalar_like(0.5, x)
    if approximate == "tanh":
        # y = x/2 (1 + tanh(u)), u = k (x + 0.044715 x^3), k = sqrt(2/pi)
        k, cubic = math.sqrt(2 / math.pi), 0.044715
        square = b.op("Mul", x, x)
        u = b.op("Mul", b.op("Mul", x, b.op("Add", b.op("Mul", square, b.scalar_like(cubic, x)),
                                            b.scalar_like(1.0, x))), b.scalar_like(k, x))
        squash = b.op("Tanh", u)
        du = b.op("Add", b.op("Mul", square, b.scalar_like(3 * cubic * k, x)), b.scalar_like(k, x))
        sech2 = b.op("Sub", b.scalar_like(1.0, x), b.op("Mul", squash, squash))
        slope = b.op("Add", b.op("Mul", b.op("Add", squash, b.scalar_like(1.0, x)), half),
                     b.op("Mul", b.op("Mul", b.op("Mul", x, half), sech2), du))
    else:
        # y = x Phi(x): slope = Phi(x) + x phi(x), with the standard normal cdf Phi and density phi
        cdf = b.op("Mul", b.op("Add", b.op("Erf", b.op("Mul", x, b.scalar_like(math.sqrt(0.5), x))),
                               b.scalar_like(1.0, x)), half)
        density = b.op("Mul", b.op("Exp", b.op("Mul", b.op("Mul", x, x), b.scalar_like(-0.5, x))),
                       b.scalar_like(1 / math.sqrt(2 * math.pi), x))
        slope = b.op("Add", cdf, b.op("Mul", x, density))
    return [b.op("Mul", grads[0], slope)]


@rule("Shape", "Size", "ArgMax", "ArgMin", "NonZero", "Equal", "Greater", "Less", "GreaterOrEqual",
      "LessOrEqual", "Not", "And", "Or", "Xor", "IsNaN", "IsInf", "ConstantOfShape", "Range", "EyeLike",
      "RandomNormalLike", "RandomUniformLike", "Floor", "Ceil", "Round", "Sign", "OneHot", "TopK",
      differentiable=False)
def _no_gradient(node, grads, needed, b):
    """Shape arithmetic, comparisons and indices: their outputs carry no gradient."""
    return [None] * len(node.input)

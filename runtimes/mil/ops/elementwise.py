"""Element-wise kernels: arithmetic, comparisons, activations, softmax, select and cast."""

from __future__ import annotations

import numpy as np
from scipy import special

from runtimes.mil.ops.base import Unsupported, kernel, on_torch, torch_float32, torch_module, torch_tensor

_BINARY = {
    "add": np.add, "sub": np.subtract, "mul": np.multiply, "real_div": np.true_divide,
    "maximum": np.maximum, "minimum": np.minimum, "mod": np.mod, "pow": np.power,
    "equal": np.equal, "not_equal": np.not_equal, "less": np.less, "less_equal": np.less_equal,
    "greater": np.greater, "greater_equal": np.greater_equal,
    "logical_and": np.logical_and, "logical_or": np.logical_or, "logical_xor": np.logical_xor,
}
# the arithmetic whose every result is one IEEE rounding: torch's gives numpy's bits, faster
# on large or broadcast operands (a mask times a (1, 32, 751, 64) activation: 0.27 -> 0.07 ms)
_EXACT_ON_TORCH = {"add": "add", "sub": "sub", "mul": "mul", "real_div": "div"}


def _binary(x, y, _fn, _on_torch):
    if _on_torch is not None and on_torch(x, y):
        return getattr(torch_module(), _on_torch)(torch_float32(x), torch_float32(y)).numpy()
    return _fn(x, y)


for _name, _fn in _BINARY.items():
    _on = _EXACT_ON_TORCH.get(_name)
    kernel(_name)(lambda x, y, _fn=_fn, _on_torch=_on: _binary(x, y, _fn, _on_torch))


@kernel("floor_div")
def floor_div(x, y):
    if np.issubdtype(np.result_type(x, y), np.integer):
        return np.floor_divide(x, y)
    return np.floor(np.true_divide(x, y))


_UNARY = {
    "abs": np.abs, "acos": np.arccos, "asin": np.arcsin, "atan": np.arctan, "atanh": np.arctanh,
    "ceil": np.ceil, "cos": np.cos, "cosh": np.cosh, "erf": special.erf, "exp": np.exp,
    "exp2": np.exp2, "floor": np.floor, "logical_not": np.logical_not, "round": np.round,
    "sign": np.sign, "sin": np.sin, "sinh": np.sinh, "sqrt": np.sqrt, "square": np.square,
    "tan": np.tan, "tanh": np.tanh,
    "relu6": lambda x: np.clip(x, 0, 6),
    "softsign": lambda x: x / (1 + np.abs(x)), "softplus": lambda x: np.logaddexp(x, 0),
    "identity": lambda x: x,
}
for _name, _fn in _UNARY.items():
    kernel(_name)(lambda x, _fn=_fn: _fn(x))


@kernel("relu")
def relu(x):
    """max(x, 0); on torch for a large float32 x (0.43 -> 0.12 ms for 1.5 M values), where adding
    zero turns its -0 into numpy's +0, so both paths give the same bits."""
    if on_torch(x):
        return torch_float32(x).relu().add_(0.0).numpy()
    return np.maximum(x, 0)


# the two hot activations of a conformer run on torch (vectorized, threaded); integers on scipy
@kernel("sigmoid")
def sigmoid(x):
    return torch_float32(x).sigmoid().numpy() if np.asarray(x).dtype.kind == "f" else special.expit(x)


@kernel("silu")
def silu(x):
    if np.asarray(x).dtype.kind != "f":
        return x * special.expit(x)
    import torch.nn.functional as F  # lazy: as torch_float32

    return F.silu(torch_float32(x)).numpy()


@kernel("log")
def log(x, epsilon=1e-45):
    return np.log(x + epsilon)


@kernel("inverse")
def inverse(x, epsilon=1e-4):
    return 1.0 / (x + epsilon)


@kernel("rsqrt")
def rsqrt(x, epsilon=1e-12):
    return 1.0 / np.sqrt(x + epsilon)


@kernel("clip")
def clip(x, alpha, beta):
    return np.minimum(np.maximum(x, alpha), beta)


@kernel("threshold")
def threshold(x, alpha):
    return np.maximum(x, alpha)


@kernel("cast")
def cast(x, dtype):
    return x  # the executor casts to the declared output type


@kernel("clamped_relu")
def clamped_relu(x, alpha, beta):
    return np.minimum(np.where(x >= 0, x, alpha * x), beta)


@kernel("elu")
def elu(x, alpha=1.0):
    return np.where(x > 0, x, alpha * (np.exp(x) - 1))


@kernel("leaky_relu")
def leaky_relu(x, alpha=0.01):
    return np.where(x >= 0, x, alpha * x)


@kernel("linear_activation")
def linear_activation(x, alpha, beta=0.0):
    return alpha * x + beta


@kernel("prelu")
def prelu(x, alpha):
    slope = np.reshape(alpha, (1, -1) + (1,) * (x.ndim - 2))
    return np.where(x >= 0, x, slope * x)


@kernel("scaled_tanh")
def scaled_tanh(x, alpha=1.0, beta=1.0):
    return alpha * np.tanh(beta * x)


@kernel("sigmoid_hard")
def sigmoid_hard(x, alpha=0.2, beta=0.5):
    return np.clip(alpha * x + beta, 0, 1)


@kernel("softplus_parametric")
def softplus_parametric(x, alpha, beta):
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return np.reshape(alpha, shape) * np.logaddexp(np.reshape(beta, shape) * x, 0)


@kernel("thresholded_relu")
def thresholded_relu(x, alpha=1.0):
    """x where x >= alpha (the specification's bound, and its value inference's), else 0."""
    return np.where(x >= alpha, x, 0)


@kernel("gelu")
def gelu(x, mode="EXACT"):
    if mode == "EXACT":
        return 0.5 * x * (1 + special.erf(x / np.sqrt(2)))
    if mode == "TANH_APPROXIMATION":
        return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))
    if mode == "SIGMOID_APPROXIMATION":
        return x * special.expit(1.702 * x)
    raise Unsupported("mode", f"{mode!r} is not a gelu mode")


@kernel("softmax")
def softmax(x, axis=-1):
    if on_torch(x):  # attention scores: torch's fused kernel (its exp differs from numpy's in the last fp32 bit)
        return torch_float32(x).softmax(int(axis)).numpy()
    shifted = x - np.max(x, axis=int(axis), keepdims=True)
    e = np.exp(shifted)
    return e / np.sum(e, axis=int(axis), keepdims=True)


@kernel("select")
def select(cond, a, b):
    if on_torch(a, b) and isinstance(cond, np.ndarray) and cond.dtype == np.bool_:
        chosen = torch_tensor(np.ascontiguousarray(cond))
        return torch_module().where(chosen, torch_float32(a), torch_float32(b)).numpy()
    return np.where(cond, a, b)

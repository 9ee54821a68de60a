"""Lists, states and the classifier's output: ops whose values are not plain tensors.

A list is a ``TensorList`` value that ops replace rather than change, so a list carried by a
loop is never altered behind the loop's back. A state is the slot the executor passes for a
state input; ``read_state`` copies its value out and ``coreml_update_state`` writes one in.
(``cond`` and ``while_loop`` run nested blocks, so the executor evaluates them itself.)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from runtimes.mil.ops.base import kernel

_ELEMENT_TYPES = {"fp16": np.float16, "fp32": np.float32, "int32": np.int32, "bool": np.bool_}


@dataclass(frozen=True)
class TensorList:
    """MIL's list: equal-shaped tensors; unwritten places read as zeros when the shape is known."""
    items: tuple
    dynamic: bool
    elem_shape: tuple | None
    dtype: np.dtype = field(default=np.dtype(np.float32))

    def read(self, index: int) -> np.ndarray:
        if not 0 <= index < len(self.items):
            raise IndexError(f"list index {index} out of range for a list of length {len(self.items)}")
        value = self.items[index]
        if value is None:
            if self.elem_shape is None:
                raise ValueError(f"list element {index} was never written and the list's element shape is unknown")
            return np.zeros(self.elem_shape, self.dtype)
        return value

    def written(self, index: int, value) -> TensorList:
        items = list(self.items)
        if index < 0:
            raise IndexError(f"list index {index} is negative")
        if index >= len(items):
            if not self.dynamic:
                raise IndexError(f"list index {index} out of range for a fixed list of length {len(items)}")
            items += [None] * (index + 1 - len(items))
        items[index] = np.asarray(value, self.dtype)
        return TensorList(tuple(items), self.dynamic, self.elem_shape, self.dtype)


@kernel("make_list")
def make_list(elem_shape=None, init_length=1, dynamic_length=True, dtype="fp32"):
    shape = None
    if elem_shape is not None and all(np.ndim(s) == 0 and np.issubdtype(np.asarray(s).dtype, np.integer)
                                      for s in elem_shape):
        shape = tuple(int(s) for s in elem_shape)
    return TensorList((None,) * int(init_length), bool(dynamic_length), shape, np.dtype(_ELEMENT_TYPES[dtype]))


@kernel("list_length")
def list_length(ls):
    return np.int32(len(ls.items))


@kernel("list_read")
def list_read(ls, index):
    return ls.read(int(index))


@kernel("list_write")
def list_write(ls, index, value):
    return ls.written(int(index), value)


@kernel("list_gather")
def list_gather(ls, indices):
    return np.stack([ls.read(int(i)) for i in np.ravel(indices)])


@kernel("list_scatter")
def list_scatter(ls, indices, value):
    for i, element in zip(np.ravel(indices), value, strict=True):
        ls = ls.written(int(i), element)
    return ls


@kernel("read_state")
def read_state(input):
    return np.array(input.value, copy=True)


@kernel("coreml_update_state")
def coreml_update_state(state, value):
    state.value = np.array(value, dtype=state.value.dtype, copy=True)
    return value


@kernel("classify")
def classify(probabilities, classes):
    """The most probable class and every class's probability, as a classifier's two outputs."""
    flat = np.ravel(probabilities)
    labels = list(classes)
    return labels[int(np.argmax(flat))], {label: float(p) for label, p in zip(labels, flat, strict=True)}

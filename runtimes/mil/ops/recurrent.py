"""Recurrent layers: LSTM, GRU and the simple RNN, one time step at a time as MIL defines them."""

from __future__ import annotations

import numpy as np
from scipy import special

from runtimes.mil.ops.base import Unsupported, kernel

_RECURRENT_ACTIVATIONS = {
    "sigmoid": special.expit, "tanh": np.tanh, "relu": lambda v: np.maximum(v, 0), "linear": lambda v: v,
}


def _activation(param, name):
    if name not in _RECURRENT_ACTIVATIONS:
        raise Unsupported(param, f"{name!r} is not implemented (implemented: {', '.join(_RECURRENT_ACTIVATIONS)})")
    return _RECURRENT_ACTIVATIONS[name]


def _lstm_direction(x, h, c, w_ih, w_hh, bias, peephole, reverse, act_rec, act_cell, act_out):
    hidden = h.shape[-1]
    gates_x = np.matmul(x, w_ih.T) + (0 if bias is None else bias)  # (s, b, 4H): i, f, o, z
    p_i, p_f, p_o = (0, 0, 0) if peephole is None else np.split(peephole, 3)
    steps = range(x.shape[0] - 1, -1, -1) if reverse else range(x.shape[0])
    outputs = np.empty((x.shape[0],) + h.shape, dtype=gates_x.dtype)
    for t in steps:
        g = gates_x[t] + h @ w_hh.T
        i = act_rec(g[:, :hidden] + p_i * c)
        f = act_rec(g[:, hidden:2 * hidden] + p_f * c)
        z = act_cell(g[:, 3 * hidden:])
        c = f * c + i * z
        o = act_rec(g[:, 2 * hidden:3 * hidden] + p_o * c)
        h = o * act_out(c)
        outputs[t] = h
    return outputs, h, c


@kernel("lstm")
def lstm(x, initial_h, initial_c, weight_ih, weight_hh, bias=None, peephole=None, weight_ih_back=None,
         weight_hh_back=None, bias_back=None, peephole_back=None, direction="forward", output_sequence=False,
         recurrent_activation="sigmoid", cell_activation="tanh", activation="tanh", clip=None):
    if clip is not None:
        raise Unsupported("clip", "cell clipping is not implemented")
    acts = (_activation("recurrent_activation", recurrent_activation),
            _activation("cell_activation", cell_activation), _activation("activation", activation))
    if direction in ("forward", "reverse"):
        seq, h, c = _lstm_direction(x, initial_h, initial_c, weight_ih, weight_hh, bias, peephole,
                                    direction == "reverse", *acts)
    elif direction == "bidirectional":
        hidden = weight_hh.shape[1]
        fwd = _lstm_direction(x, initial_h[:, :hidden], initial_c[:, :hidden], weight_ih, weight_hh, bias,
                              peephole, False, *acts)
        bwd = _lstm_direction(x, initial_h[:, hidden:], initial_c[:, hidden:], weight_ih_back, weight_hh_back,
                              bias_back, peephole_back, True, *acts)
        seq = np.concatenate([fwd[0], bwd[0]], axis=-1)
        h = np.concatenate([fwd[1], bwd[1]], axis=-1)
        c = np.concatenate([fwd[2], bwd[2]], axis=-1)
        if not output_sequence:
            # the final step of each direction: the last position forward, the first backward
            return np.concatenate([fwd[0][-1:], bwd[0][:1]], axis=-1), h, c
    else:
        raise Unsupported("direction", f"{direction!r} is not one of forward, reverse, bidirectional")
    if not output_sequence:
        seq = seq[:1] if direction == "reverse" else seq[-1:]
    return seq, h, c

"""Recurrent layers: LSTM, GRU and the simple RNN, one time step at a time as MIL defines them.

Direction. A ``reverse`` layer reads the sequence from its last step to its first and returns
its outputs in that reading order (so ``output_sequence=False`` returns the step that read time
0), as Apple's own op tests of these layers expect; a ``bidirectional`` layer returns its
backward half aligned with the input's time steps.
"""

from __future__ import annotations

import numpy as np
from scipy import special

from runtimes.mil.ops.base import Unsupported, kernel, matrix_product

_RECURRENT_ACTIVATIONS = {
    "sigmoid": special.expit, "tanh": np.tanh, "relu": lambda v: np.maximum(v, 0), "linear": lambda v: v,
    # no parameters reach these two inside a layer: the standalone ops' defaults (alpha, beta)
    "hard_sigmoid": lambda v: np.clip(0.2 * v + 0.5, 0, 1), "scaled_tanh": np.tanh,
}
_RECURRENT_ACTIVATIONS["sigmoid_hard"] = _RECURRENT_ACTIVATIONS["hard_sigmoid"]


def _activation(param, name):
    if name not in _RECURRENT_ACTIVATIONS:
        raise Unsupported(param, f"{name!r} is not implemented (implemented: {', '.join(_RECURRENT_ACTIVATIONS)})")
    return _RECURRENT_ACTIVATIONS[name]


def _reading_order(x, reverse: bool):
    return x[::-1] if reverse else x


def _lstm_direction(x, h, c, w_ih, w_hh, bias, peephole, reverse, clip, act_rec, act_cell, act_out):
    """Outputs in reading order, final h and c. With ``clip``, the cell state is clipped to
    [-clip, clip] as soon as it is updated, so the output gate's peephole and the output read
    the clipped cell (the specification's "cell gate is clipped", as Apple's op tests compute it)."""
    hidden = h.shape[-1]
    gates_x = matrix_product(_reading_order(x, reverse), w_ih.T) + (0 if bias is None else bias)  # i, f, o, z
    p_i, p_f, p_o = (0, 0, 0) if peephole is None else np.split(peephole, 3)
    outputs = np.empty((x.shape[0],) + h.shape, dtype=gates_x.dtype)
    for t in range(x.shape[0]):
        g = gates_x[t] + matrix_product(h, w_hh.T)
        i = act_rec(g[:, :hidden] + p_i * c)
        f = act_rec(g[:, hidden:2 * hidden] + p_f * c)
        z = act_cell(g[:, 3 * hidden:])
        c = f * c + i * z
        if clip is not None:
            c = np.clip(c, -clip, clip)
        o = act_rec(g[:, 2 * hidden:3 * hidden] + p_o * c)
        h = o * act_out(c)
        outputs[t] = h
    return outputs, h, c


def _directions(direction):
    if direction not in ("forward", "reverse"):
        raise Unsupported("direction", f"{direction!r} is not one of forward, reverse")
    return direction == "reverse"


def _sequence(outputs, output_sequence):
    return outputs if output_sequence else outputs[-1:]


@kernel("lstm")
def lstm(x, initial_h, initial_c, weight_ih, weight_hh, bias=None, peephole=None, weight_ih_back=None,
         weight_hh_back=None, bias_back=None, peephole_back=None, direction="forward", output_sequence=False,
         recurrent_activation="sigmoid", cell_activation="tanh", activation="tanh", clip=None):
    clip = None if clip is None else float(clip)
    acts = (_activation("recurrent_activation", recurrent_activation),
            _activation("cell_activation", cell_activation), _activation("activation", activation))
    if direction != "bidirectional":
        seq, h, c = _lstm_direction(x, initial_h, initial_c, weight_ih, weight_hh, bias, peephole,
                                    _directions(direction), clip, *acts)
        return _sequence(seq, output_sequence), h, c
    hidden = weight_hh.shape[1]
    fwd = _lstm_direction(x, initial_h[:, :hidden], initial_c[:, :hidden], weight_ih, weight_hh, bias,
                          peephole, False, clip, *acts)
    bwd = _lstm_direction(x, initial_h[:, hidden:], initial_c[:, hidden:], weight_ih_back, weight_hh_back,
                          bias_back, peephole_back, True, clip, *acts)
    h = np.concatenate([fwd[1], bwd[1]], axis=-1)
    c = np.concatenate([fwd[2], bwd[2]], axis=-1)
    if not output_sequence:  # the final step of each direction
        return np.concatenate([fwd[0][-1:], bwd[0][-1:]], axis=-1), h, c
    return np.concatenate([fwd[0], bwd[0][::-1]], axis=-1), h, c


@kernel("gru")
def gru(x, initial_h, weight_ih, weight_hh, bias=None, direction="forward", output_sequence=False,
        recurrent_activation="sigmoid", activation="tanh", reset_after=False, input_bias=None):
    """Gates in MIL's order r, o, z. Without ``reset_after`` the reset gate scales h before its
    product with the hidden weights; with it (iOS18) it scales that product plus ``bias``, the
    hidden bias, while ``input_bias`` joins the input side (PyTorch's GRU)."""
    act_rec = _activation("recurrent_activation", recurrent_activation)
    act = _activation("activation", activation)
    hidden = initial_h.shape[-1]
    w_r, w_o, w_z = np.split(weight_hh, 3)
    gates_x = matrix_product(_reading_order(x, _directions(direction)), weight_ih.T)
    if input_bias is not None:
        gates_x = gates_x + input_bias
    hidden_bias = np.zeros(3 * hidden, gates_x.dtype)
    if bias is not None:
        if reset_after:
            hidden_bias = np.asarray(bias, gates_x.dtype)
        else:
            gates_x = gates_x + bias
    b_r, b_o, b_z = np.split(hidden_bias, 3)
    h = initial_h
    outputs = np.empty((x.shape[0],) + h.shape, dtype=gates_x.dtype)
    for t in range(x.shape[0]):
        g_r, g_o, g_z = np.split(gates_x[t], 3, axis=-1)
        r = act_rec(g_r + matrix_product(h, w_r.T) + b_r)
        z = act_rec(g_z + matrix_product(h, w_z.T) + b_z)
        o = act(g_o + (r * (matrix_product(h, w_o.T) + b_o) if reset_after else matrix_product(r * h, w_o.T)))
        h = (1 - z) * o + z * h
        outputs[t] = h
    return _sequence(outputs, output_sequence), h


@kernel("rnn")
def rnn(x, initial_h, weight_ih, weight_hh, bias=None, direction="forward", output_sequence=False,
        activation="tanh"):
    act = _activation("activation", activation)
    gates_x = matrix_product(_reading_order(x, _directions(direction)), weight_ih.T) + (0 if bias is None else bias)
    h = initial_h
    outputs = np.empty((x.shape[0],) + h.shape, dtype=gates_x.dtype)
    for t in range(x.shape[0]):
        h = act(gates_x[t] + matrix_product(h, weight_hh.T))
        outputs[t] = h
    return _sequence(outputs, output_sequence), h

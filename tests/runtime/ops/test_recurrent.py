"""Recurrent layers on the executor, against their equations written out in numpy float64 (the
kernels' matrix products run on torch). A reverse layer reads from the last step and returns its
outputs in reading order, as Apple's own op tests of these layers expect."""

from __future__ import annotations

import numpy as np
import pytest
from coremltools.converters.mil.mil import Builder as mb
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.runtime.ops.oracle import BOTH_PRECISIONS, FLOATS, arrays, close

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def _sigmoid(v):
    return 1 / (1 + np.exp(-v))


def _f64(*arrays_):
    return [a.astype(np.float64) for a in arrays_]


def _lstm(x, h, c, w_ih, w_hh, bias):
    """One direction in reading order; gates in MIL's order i, f, o, z."""
    outputs = []
    for xt in x:
        i, f, o, z = np.split(xt @ w_ih.T + h @ w_hh.T + bias, 4, axis=-1)
        c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(z)
        h = _sigmoid(o) * np.tanh(c)
        outputs.append(h)
    return np.stack(outputs), h, c


@settings(max_examples=15, deadline=None)
@given(FLOATS, st.sampled_from(["forward", "reverse", "bidirectional"]), st.booleans(), st.integers(1, 5),
       st.integers(1, 3), st.integers(1, 6), st.integers(1, 6), st.data())
def test_lstm_follows_the_specification(run_mil, dtype, direction, output_sequence, steps, batch, d_in, hidden,
                                        data):
    dirs = 2 if direction == "bidirectional" else 1
    x = data.draw(arrays((steps, batch, d_in), dtype))
    h0, c0 = (data.draw(arrays((batch, dirs * hidden), dtype, -1, 1)) for _ in range(2))
    w = [(data.draw(arrays((4 * hidden, d_in), dtype, -1, 1)), data.draw(arrays((4 * hidden, hidden), dtype, -1, 1)),
          data.draw(arrays((4 * hidden,), dtype, -1, 1))) for _ in range(dirs)]
    weights = dict(weight_ih=w[0][0], weight_hh=w[0][1], bias=w[0][2])
    if dirs == 2:
        weights.update(weight_ih_back=w[1][0], weight_hh_back=w[1][1], bias_back=w[1][2])
    seq, h, c = run_mil(lambda x, h, c: list(mb.lstm(x=x, initial_h=h, initial_c=c, direction=direction,
                                                     output_sequence=output_sequence, **weights)),
                        {"x": x, "h": h0, "c": c0})
    x64, h64, c64 = _f64(x, h0, c0)
    forward = _lstm(x64[::-1] if direction == "reverse" else x64, h64[:, :hidden], c64[:, :hidden], *_f64(*w[0]))
    if dirs == 1:
        out, hn, cn = forward
        out = out if output_sequence else out[-1:]
    else:
        backward = _lstm(x64[::-1], h64[:, hidden:], c64[:, hidden:], *_f64(*w[1]))
        hn, cn = (np.concatenate([forward[k], backward[k]], -1) for k in (1, 2))
        out = (np.concatenate([forward[0], backward[0][::-1]], -1) if output_sequence  # time-aligned
               else np.concatenate([forward[0][-1:], backward[0][-1:]], -1))  # each direction's last step
    scale = steps * (d_in + hidden)
    close(seq, out, scale=scale)
    close(h, hn, scale=scale)
    close(c, cn, scale=scale)


def _lstm_clipped(x, h, c, w_ih, w_hh, bias, peephole, clip):
    """One forward direction with cell clipping and peepholes: i and f look at the cell before the
    step, o at the clipped cell after it."""
    p_i, p_f, p_o = np.split(peephole, 3)
    outputs = []
    for xt in x:
        i, f, o, z = np.split(xt @ w_ih.T + h @ w_hh.T + bias, 4, axis=-1)
        c = np.clip(_sigmoid(f + p_f * c) * c + _sigmoid(i + p_i * c) * np.tanh(z), -clip, clip)
        h = _sigmoid(o + p_o * c) * np.tanh(c)
        outputs.append(h)
    return np.stack(outputs), h, c


@BOTH_PRECISIONS
@settings(max_examples=15, deadline=None)
@given(st.integers(1, 5), st.integers(1, 3), st.integers(1, 4), st.integers(1, 4), st.floats(0.05, 2.0), st.data())
def test_lstm_clips_the_cell_state(run_mil, dtype, steps, batch, d_in, hidden, clip, data):
    """``clip`` bounds the cell state to [-clip, clip] at every step (weights up to 3 drive it past)."""
    x = data.draw(arrays((steps, batch, d_in), dtype))
    h0, c0 = (data.draw(arrays((batch, hidden), dtype, -1, 1)) for _ in range(2))
    w_ih, w_hh = data.draw(arrays((4 * hidden, d_in), dtype)), data.draw(arrays((4 * hidden, hidden), dtype))
    bias, peephole = data.draw(arrays((4 * hidden,), dtype)), data.draw(arrays((3 * hidden,), dtype, -1, 1))
    clip = float(np.asarray(clip, dtype))
    seq, h, c = run_mil(lambda x, h, c: list(mb.lstm(x=x, initial_h=h, initial_c=c, weight_ih=w_ih, weight_hh=w_hh,
                                                     bias=bias, peephole=peephole, clip=np.asarray(clip, dtype),
                                                     output_sequence=True)),
                        {"x": x, "h": h0, "c": c0})
    out, hn, cn = _lstm_clipped(*_f64(x, h0, c0, w_ih, w_hh, bias, peephole), clip)
    assert np.all(np.abs(c.astype(np.float64)) <= clip)
    scale = steps * (d_in + hidden)
    close(seq, out, scale=scale)
    close(h, hn, scale=scale)
    close(c, cn, scale=scale)


@pytest.mark.parametrize("direction", ["forward", "reverse"])
@pytest.mark.parametrize("output_sequence", [True, False])
@BOTH_PRECISIONS
@settings(max_examples=8, deadline=None)
@given(st.integers(1, 4), st.integers(1, 2), st.integers(1, 3), st.integers(1, 3), st.data())
def test_gru_follows_the_specification(run_mil, dtype, direction, output_sequence, steps, batch, d_in, hidden, data):
    """r and z from x and h; o from x and (r * h); h' = (1 - z) o + z h, weights in r, o, z order."""
    x = data.draw(arrays((steps, batch, d_in), dtype, -1, 1))
    h0 = data.draw(arrays((batch, hidden), dtype, -1, 1))
    w_ih = data.draw(arrays((3 * hidden, d_in), dtype, -1, 1))
    w_hh = data.draw(arrays((3 * hidden, hidden), dtype, -1, 1))
    bias = data.draw(arrays((3 * hidden,), dtype, -1, 1))
    seq, last = run_mil(lambda x, h: list(mb.gru(x=x, initial_h=h, weight_ih=w_ih, weight_hh=w_hh, bias=bias,
                                                 direction=direction, output_sequence=output_sequence)),
                        {"x": x, "h": h0})
    (wr, wo, wz), (rr, ro, rz), (br, bo, bz) = (np.split(a.astype(np.float64), 3) for a in (w_ih, w_hh, bias))
    h, outputs = h0.astype(np.float64), []
    for xt in (x[::-1] if direction == "reverse" else x).astype(np.float64):
        r = _sigmoid(xt @ wr.T + h @ rr.T + br)
        z = _sigmoid(xt @ wz.T + h @ rz.T + bz)
        o = np.tanh(xt @ wo.T + (r * h) @ ro.T + bo)
        h = (1 - z) * o + z * h
        outputs.append(h)
    expected = np.stack(outputs) if output_sequence else outputs[-1][None]
    close(seq, expected, scale=steps * (d_in + hidden))
    close(last, h, scale=steps * (d_in + hidden))


@BOTH_PRECISIONS
@settings(max_examples=10, deadline=None)
@given(st.integers(1, 4), st.integers(1, 2), st.integers(1, 3), st.integers(1, 3), st.data())
def test_gru_reset_after_is_pytorchs_gru(run_mil, dtype, steps, batch, d_in, hidden, data):
    """iOS18's reset_after: PyTorch's GRU equations, the reset gate scaling (W_ho h + b_ho), with
    ``input_bias`` on the input side and ``bias`` on the hidden side."""
    x = data.draw(arrays((steps, batch, d_in), dtype, -1, 1))
    h0 = data.draw(arrays((batch, hidden), dtype, -1, 1))
    w_ih = data.draw(arrays((3 * hidden, d_in), dtype, -1, 1))
    w_hh = data.draw(arrays((3 * hidden, hidden), dtype, -1, 1))
    b_ih, b_hh = (data.draw(arrays((3 * hidden,), dtype, -1, 1)) for _ in range(2))
    seq, last = run_mil(lambda x, h: list(mb.gru(x=x, initial_h=h, weight_ih=w_ih, weight_hh=w_hh, bias=b_hh,
                                                 input_bias=b_ih, reset_after=True, output_sequence=True)),
                        {"x": x, "h": h0}, opset="iOS18")
    (wr, wo, wz), (rr, ro, rz), (ir, io, iz), (hr, ho, hz) = (np.split(a.astype(np.float64), 3)
                                                              for a in (w_ih, w_hh, b_ih, b_hh))
    h, outputs = h0.astype(np.float64), []
    for xt in x.astype(np.float64):
        r = _sigmoid(xt @ wr.T + ir + h @ rr.T + hr)
        z = _sigmoid(xt @ wz.T + iz + h @ rz.T + hz)
        n = np.tanh(xt @ wo.T + io + r * (h @ ro.T + ho))
        h = (1 - z) * n + z * h
        outputs.append(h)
    close(seq, np.stack(outputs), scale=steps * (d_in + hidden))
    close(last, h, scale=steps * (d_in + hidden))


@pytest.mark.parametrize("direction", ["forward", "reverse"])
@BOTH_PRECISIONS
@settings(max_examples=10, deadline=None)
@given(st.integers(1, 4), st.integers(1, 2), st.integers(1, 3), st.integers(1, 3), st.sampled_from(["tanh", "relu"]),
       st.data())
def test_rnn_follows_the_specification(run_mil, dtype, direction, steps, batch, d_in, hidden, activation, data):
    x = data.draw(arrays((steps, batch, d_in), dtype, -1, 1))
    h0 = data.draw(arrays((batch, hidden), dtype, -1, 1))
    w_ih = data.draw(arrays((hidden, d_in), dtype, -1, 1))
    w_hh = data.draw(arrays((hidden, hidden), dtype, -1, 1))
    bias = data.draw(arrays((hidden,), dtype, -1, 1))
    seq, last = run_mil(lambda x, h: list(mb.rnn(x=x, initial_h=h, weight_ih=w_ih, weight_hh=w_hh, bias=bias,
                                                 direction=direction, output_sequence=True, activation=activation)),
                        {"x": x, "h": h0}, opset="iOS17")
    act = np.tanh if activation == "tanh" else (lambda v: np.maximum(v, 0))
    w_ih64, w_hh64, b64 = _f64(w_ih, w_hh, bias)
    h, outputs = h0.astype(np.float64), []
    for xt in (x[::-1] if direction == "reverse" else x).astype(np.float64):
        h = act(xt @ w_ih64.T + h @ w_hh64.T + b64)
        outputs.append(h)
    close(seq, np.stack(outputs), scale=steps * (d_in + hidden))
    close(last, h, scale=steps * (d_in + hidden))

"""Recurrent layers on the executor, against independent formulas (numpy float64 or torch)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from coremltools.converters.mil.mil import Builder as mb
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.runtime.ops.oracle import BOTH_PRECISIONS, FLOATS, arrays, close

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def _mil_gates(w):
    """torch's LSTM gate order (i, f, g, o) as MIL's (i, f, o, z)."""
    i, f, g, o = np.split(w, 4)
    return np.concatenate([i, f, o, g])


@settings(max_examples=15, deadline=None)
@given(FLOATS, st.sampled_from(["forward", "reverse", "bidirectional"]), st.booleans(), st.integers(1, 5),
       st.integers(1, 3), st.integers(1, 6), st.integers(1, 6), st.data())
def test_lstm_against_torch(run_mil, dtype, direction, output_sequence, steps, batch, d_in, hidden, data):
    torch.manual_seed(data.draw(st.integers(0, 1000)))
    bidirectional = direction == "bidirectional"
    ref = torch.nn.LSTM(d_in, hidden, bidirectional=bidirectional).double()
    dirs = 2 if bidirectional else 1
    x = data.draw(arrays((steps, batch, d_in), dtype))
    h0 = data.draw(arrays((dirs, batch, hidden), dtype, -1, 1))
    c0 = data.draw(arrays((dirs, batch, hidden), dtype, -1, 1))
    params = {n: _mil_gates(p.detach().numpy()).astype(dtype) for n, p in ref.named_parameters()}
    for suffix in ("l0", "l0_reverse")[:dirs]:  # MIL holds one bias: b_ih + b_hh, in the program's dtype
        params[f"bias_ih_{suffix}"] = (params.pop(f"bias_ih_{suffix}") + params[f"bias_hh_{suffix}"]).astype(dtype)
        params[f"bias_hh_{suffix}"] = np.zeros_like(params[f"bias_hh_{suffix}"])
    with torch.no_grad():  # the reference sees the very weights the program holds
        for n, p in ref.named_parameters():
            i, f, o, g = np.split(params[n].astype(np.float64), 4)
            p.copy_(torch.from_numpy(np.concatenate([i, f, g, o])))
    weights = dict(weight_ih=params["weight_ih_l0"], weight_hh=params["weight_hh_l0"], bias=params["bias_ih_l0"])
    if bidirectional:
        weights.update(weight_ih_back=params["weight_ih_l0_reverse"], weight_hh_back=params["weight_hh_l0_reverse"],
                       bias_back=params["bias_ih_l0_reverse"])
    init_h = np.concatenate(list(h0), axis=-1)
    init_c = np.concatenate(list(c0), axis=-1)
    seq, h, c = run_mil(lambda x, h, c: list(mb.lstm(x=x, initial_h=h, initial_c=c, direction=direction,
                                                            output_sequence=output_sequence, **weights)),
                               {"x": x, "h": init_h, "c": init_c})
    t = torch.from_numpy(x.astype(np.float64))
    th0, tc0 = torch.from_numpy(h0.astype(np.float64)), torch.from_numpy(c0.astype(np.float64))
    with torch.no_grad():
        if direction == "reverse":  # outputs in reading order, last step first (Apple's op tests)
            out, (hn, cn) = ref(torch.flip(t, [0]), (th0, tc0))
        else:
            out, (hn, cn) = ref(t, (th0, tc0))
    hn, cn = torch.cat(list(hn), -1), torch.cat(list(cn), -1)
    if not output_sequence:
        out = torch.cat([out[-1:, :, :hidden], out[:1, :, hidden:]], -1) if bidirectional else out[-1:]
    scale = steps * (d_in + hidden)
    close(seq, out.numpy(), scale=scale)
    close(h, hn.numpy(), scale=scale)
    close(c, cn.numpy(), scale=scale)


def _sigmoid(v):
    return 1 / (1 + np.exp(-v))


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
    torch.manual_seed(data.draw(st.integers(0, 1000)))
    ref = torch.nn.GRU(d_in, hidden).double()
    x = data.draw(arrays((steps, batch, d_in), dtype, -1, 1))
    h0 = data.draw(arrays((batch, hidden), dtype, -1, 1))

    def mil_order(p):  # torch's r, z, n as MIL's r, o, z, in the program's dtype
        r, z, n = np.split(p.detach().numpy(), 3)
        return np.concatenate([r, n, z]).astype(dtype)

    params = {name: mil_order(p) for name, p in ref.named_parameters()}
    with torch.no_grad():  # the reference sees the very weights the program holds
        for name, p in ref.named_parameters():
            r, n, z = np.split(params[name].astype(np.float64), 3)
            p.copy_(torch.from_numpy(np.concatenate([r, z, n])))
    seq, last = run_mil(lambda x, h: list(mb.gru(
        x=x, initial_h=h, weight_ih=params["weight_ih_l0"], weight_hh=params["weight_hh_l0"],
        bias=params["bias_hh_l0"], input_bias=params["bias_ih_l0"], reset_after=True, output_sequence=True)),
        {"x": x, "h": h0}, opset="iOS18")
    with torch.no_grad():
        out, hn = ref(torch.from_numpy(x.astype(np.float64)), torch.from_numpy(h0.astype(np.float64))[None])
    close(seq, out.numpy(), scale=steps * (d_in + hidden))
    close(last, hn[0].numpy(), scale=steps * (d_in + hidden))


@pytest.mark.parametrize("direction", ["forward", "reverse"])
@BOTH_PRECISIONS
@settings(max_examples=10, deadline=None)
@given(st.integers(1, 4), st.integers(1, 2), st.integers(1, 3), st.integers(1, 3), st.sampled_from(["tanh", "relu"]),
       st.data())
def test_rnn_matches_torch(run_mil, dtype, direction, steps, batch, d_in, hidden, activation, data):
    torch.manual_seed(data.draw(st.integers(0, 1000)))
    ref = torch.nn.RNN(d_in, hidden, nonlinearity=activation).double()
    x = data.draw(arrays((steps, batch, d_in), dtype, -1, 1))
    h0 = data.draw(arrays((batch, hidden), dtype, -1, 1))
    w_ih, w_hh = (p.detach().numpy().astype(dtype) for p in (ref.weight_ih_l0, ref.weight_hh_l0))
    bias = (ref.bias_ih_l0 + ref.bias_hh_l0).detach().numpy().astype(dtype)  # MIL holds one bias
    with torch.no_grad():
        ref.weight_ih_l0.copy_(torch.from_numpy(w_ih.astype(np.float64)))
        ref.weight_hh_l0.copy_(torch.from_numpy(w_hh.astype(np.float64)))
        ref.bias_ih_l0.copy_(torch.from_numpy(bias.astype(np.float64)))
        ref.bias_hh_l0.zero_()
    seq, last = run_mil(lambda x, h: list(mb.rnn(x=x, initial_h=h, weight_ih=w_ih, weight_hh=w_hh, bias=bias,
                                                 direction=direction, output_sequence=True, activation=activation)),
                        {"x": x, "h": h0}, opset="iOS17")
    t = torch.from_numpy(x.astype(np.float64))
    with torch.no_grad():  # reverse: read from the last step, outputs in reading order
        read = torch.flip(t, [0]) if direction == "reverse" else t
        out, hn = ref(read, torch.from_numpy(h0.astype(np.float64))[None])
    close(seq, out.numpy(), scale=steps * (d_in + hidden))
    close(last, hn[0].numpy(), scale=steps * (d_in + hidden))

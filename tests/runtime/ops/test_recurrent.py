"""Recurrent layers on the executor, against independent formulas (numpy float64 or torch)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from coremltools.converters.mil.mil import Builder as mb
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.runtime.ops.oracle import FLOATS, arrays, close

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
        if direction == "reverse":
            out, (hn, cn) = ref(torch.flip(t, [0]), (th0, tc0))
            out = torch.flip(out, [0])
        else:
            out, (hn, cn) = ref(t, (th0, tc0))
    hn, cn = torch.cat(list(hn), -1), torch.cat(list(cn), -1)
    if not output_sequence:
        last = out[:1] if direction == "reverse" else out[-1:]
        out = torch.cat([out[-1:, :, :hidden], out[:1, :, hidden:]], -1) if bidirectional else last
    scale = steps * (d_in + hidden)
    close(seq, out.numpy(), scale=scale)
    close(h, hn.numpy(), scale=scale)
    close(c, cn.numpy(), scale=scale)

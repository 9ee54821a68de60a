"""Long recordings through every long-audio strategy: the stress sets (words straddling every
planned window boundary; silences where decoders lose words) and the long-form set, each
strategy run on NeMo's modules and on the fp32 export, so a strategy's own losses and the
export's numerics stay apart. The stress sets' rendered word times place every word; the
strategies' WER, seam losses and word timing go to the ``long_audio`` block of metadata.json and
its plots (``reports.plugin``)."""

from __future__ import annotations

import json
from itertools import pairwise

import numpy as np
import pytest
import soundfile

from exporters.components import decode_packages
from reports.kinds import LongAudio
from reports.plugin import send
from tests.parity.test_held_out import shipped_test_model
from validation.evaluation import decoders_for, evaluate, token_text, windowed_decoders_for
from validation.held_out import BUILTIN_SETS, SILENCE_CASES, STRESS_PAUSE_SECONDS, open_data_set, planned_boundaries
from validation.timestamps import word_timer
from validation.windowing import DEFAULT_STRATEGY, STRATEGIES

pytestmark = pytest.mark.parity

SETS = ("seams", "silence", "long-form")


def _rows(manifest) -> list[dict]:
    return [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def long_audio(torch_model, dims, export_cache, session_exporters, predictor, backend, pytestconfig):
    """Each set evaluated by every strategy (the default gated), NeMo on whole recordings shared."""
    exporter = session_exporters["float32"]
    decoding = dims.family.decodings[0]
    decode = decode_packages(decoding)
    packages = {e.name: e.package for e in exporter.export_all(decode)}
    exports = {"export": packages}
    primary, *others = [STRATEGIES[DEFAULT_STRATEGY], *(s for n, s in STRATEGIES.items() if n != DEFAULT_STRATEGY)]
    results = {}
    for name in SETS:
        _, utterances, bad = open_data_set(f"builtin:{name}", export_cache, dims)
        assert not bad, bad
        results[name] = evaluate(
            utterances, decoders_for(torch_model, dims, exports, predictor, primary, decoding), token_text(torch_model),
            dims, exact=["export"], strategy=primary,
            compared={s.name: windowed_decoders_for(torch_model, dims, exports, predictor, s, decoding)
                      for s in others},
            timer=word_timer(torch_model, dims))
    send(pytestconfig, LongAudio(exporter.metadata(exporter.export_all(decode)),
                                 {name: {**r.block({"backend": backend, "compute_precision": "float32"}), "set": name}
                                  for name, r in results.items()}))
    return results


def test_a_word_straddles_every_planned_window_boundary(export_cache, dims):
    rows = _rows(BUILTIN_SETS["seams"](export_cache, dims))
    boundaries = planned_boundaries(dims, 3)
    assert sorted({r["case"] for r in rows}) == sorted(boundaries) and len(rows) == 2 * len(boundaries)
    for row in rows:
        times = row["word_times"]
        assert len(times) == len(row["text"].split())
        for boundary in boundaries[row["case"]]:
            assert any(a < boundary < b for a, b in times), (row["audio_filepath"], boundary)
        # between sentences (over 0.35 s without a word): pauses of 0.2 to 3 s plus each sentence's own lead and tail
        gaps = [b[0] - a[1] for a, b in pairwise(times) if b[0] - a[1] > 0.35]
        assert gaps and max(gaps) <= STRESS_PAUSE_SECONDS[1] + 0.7, gaps


def test_the_silence_set_holds_each_case_twice(export_cache, dims):
    manifest = BUILTIN_SETS["silence"](export_cache, dims)
    rows = _rows(manifest)
    assert sorted(r["case"] for r in rows) == sorted(list(SILENCE_CASES) * 2)
    for row in rows:
        times, seconds = row["word_times"], row["duration"]
        assert sum(words for words, _ in row["sentences"]) == len(times) == len(row["text"].split())
        audio, rate = soundfile.read(str(manifest.parent / row["audio_filepath"]), dtype="float32")
        lead, speech, _, trail, quieter = SILENCE_CASES[row["case"]]
        assert times[0][0] >= lead[0] and seconds - times[-1][1] >= trail[0], row["case"]
        if row["case"] == "speech_then_silence":
            assert seconds <= dims.max_audio_seconds  # one window: 12 s of speech, then 3 s of silence
        *_, (last_words, last_gain) = row["sentences"]
        if quieter == (0.0, 0.0):
            assert all(gain == 0.0 for _, gain in row["sentences"])
            continue
        # the last sentence 20 to 30 dB below the rest; measured over the words' spans the drop also
        # holds the sentences' own loudness (their voices): within 2.1 dB of the gain on the four
        # recordings (-21.0 for -21.3, -32.0 for -29.9, -30.0 for -29.4, -23.8 for -24.3)
        assert quieter[0] <= last_gain <= quieter[1]
        drop = _level(audio, rate, times[-last_words:]) - _level(audio, rate, times[:-last_words])
        assert abs(drop - last_gain) <= 3.0, (row["audio_filepath"], drop, last_gain)


def _level(audio: np.ndarray, rate: int, spans: list) -> float:
    """The RMS level in dB of the samples inside ``spans``."""
    inside = np.concatenate([audio[int(a * rate):int(b * rate)] for a, b in spans])
    return 10 * np.log10(float(np.mean(inside.astype(np.float64) ** 2)))


@pytest.mark.parametrize("name", SETS)
def test_every_strategy_runs_the_export_like_nemo(long_audio, name):
    """The fp32 export transcribes each strategy's windows exactly as NeMo does on them, so what a
    strategy loses is the strategy's, not the export's."""
    result = long_audio[name]
    for strategy in [result.strategy.name, *result.compared]:
        under = result.under(strategy)
        assert under.failure("export") is None, under.failure("export")
        assert all(r["identical"]["export"] for r in under.records), strategy


@pytest.mark.parametrize("name", ("seams", "silence"))
def test_the_exports_word_times_are_nemos_and_every_word_is_timed(long_audio, name):
    block = long_audio[name].block({})
    timing = block["word_timing"]["export"]
    assert timing["words"] > 0 and timing["max_abs_start_ms"] == 0.0 and timing["max_abs_end_ms"] == 0.0, timing
    rendered = sum(len(r["reference"].split()) for r in long_audio[name].records)
    assert block["timing_error"]["nemo_full"]["words"] >= 0.8 * rendered  # the words the model got right are timed
    losses = block["seam_losses"]["export"]
    assert losses["near_seams"]["words"] + losses["elsewhere"]["words"] == rendered


def test_the_shipped_test_model_transcribes_the_stress_sets(long_audio, model_source):
    """The numbers the README's recommendation rests on: the shipped test model decodes the seams
    set through the default windows about as well as whole recordings."""
    if not shipped_test_model(model_source):
        pytest.skip("the README's figures are those of the shipped test model (--preset parakeet-tdt-tiny-trained)")
    seams = long_audio["seams"]
    assert seams.wer("nemo_windowed") <= 0.05, seams.block({})["wer"]

"""Data-set evaluation without a model: manifests (and every kind of bad line), reading spans of
recordings, the windows long audio is cut into and their merge, where two transcripts first
differ, and the set's verdicts."""

from __future__ import annotations

import json
import math
from itertools import pairwise

import numpy as np
import pytest
import soundfile

from infra.errors import UserError
from tests.unit.conftest import DIMS
from validation import evaluation
from validation.audio import AudioError
from validation.evaluation import (
    Evaluation,
    Pace,
    PaceBook,
    Utterance,
    clock,
    decode_streamed,
    evaluate,
    first_difference,
    read_manifest,
    read_utterance,
    unexplained_difference,
)
from validation.metrics import word_errors
from validation.windowing import Decoded, decode_windowed, plan_windows


def _wav(path, seconds, rate=16000, channels=1, value=0.1):
    soundfile.write(str(path), np.full((int(seconds * rate), channels), value, np.float32), rate, subtype="FLOAT")
    return path


def test_a_manifest_line_that_cannot_be_used_is_reported_and_the_rest_kept(tmp_path):
    (tmp_path / "audio").mkdir()
    _wav(tmp_path / "audio" / "a.wav", 1.0)
    lines = [json.dumps({"audio_filepath": "audio/a.wav", "text": "hello", "offset": 0.5, "duration": 0.25}),
             "{not json",
             json.dumps({"text": "no audio"}),
             json.dumps({"audio_filepath": "audio/a.wav", "duration": "long"}),
             "",
             json.dumps({"audio_filepath": "audio/a.wav", "offset": -1}),
             json.dumps({"audio_filepath": str(tmp_path / "audio" / "a.wav")})]
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n")
    utterances, bad = read_manifest(tmp_path / "m.jsonl")
    assert [u.key for u in utterances] == ["m.jsonl:1", "m.jsonl:7"]
    assert utterances[0] == Utterance("m.jsonl:1", tmp_path / "audio" / "a.wav", "hello", 0.5, 0.25)
    assert utterances[1].text is None  # agreement with NeMo only
    assert [b.where for b in bad] == ["m.jsonl:2", "m.jsonl:3", "m.jsonl:4", "m.jsonl:6"]
    assert "not JSON" in bad[0].reason and "no audio_filepath" in bad[1].reason
    assert "not numbers" in bad[2].reason and "must be >= 0" in bad[3].reason


def test_spans_that_overflow_a_wrong_text_type_and_missing_files_are_bad_lines_not_a_crash(tmp_path):
    """``Infinity`` and 1e308 used to end the whole run in an OverflowError while reading audio; a
    number as text was quietly taken as no reference; a missing file was found only after the
    model had loaded."""
    _wav(tmp_path / "a.wav", 1.0)
    lines = ['{"audio_filepath": "a.wav", "duration": Infinity}', '{"audio_filepath": "a.wav", "offset": 1e308}',
             '{"audio_filepath": "a.wav", "duration": NaN}', '{"audio_filepath": "a.wav", "text": 123}',
             '{"audio_filepath": "gone.wav", "text": "hello"}', '{"audio_filepath": "a.wav", "text": "fine"}']
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n")
    utterances, bad = read_manifest(tmp_path / "m.jsonl")
    assert [u.key for u in utterances] == ["m.jsonl:6"]
    assert [b.where for b in bad] == [f"m.jsonl:{i}" for i in range(1, 6)]
    assert all("both finite and below 1e+09 s" in b.reason for b in bad[:3])
    assert bad[3].reason == "text is int 123; expected a string"
    assert bad[4].reason.endswith("gone.wav: no such file")


def test_a_manifest_line_that_is_not_utf8_is_a_bad_line(tmp_path):
    _wav(tmp_path / "a.wav", 1.0)
    good = json.dumps({"audio_filepath": "a.wav", "text": "fine"}).encode()
    latin = '{"audio_filepath": "a.wav", "text": "caf\xe9"}'.encode("latin-1")
    (tmp_path / "m.jsonl").write_bytes(b"\n".join([good, latin, good]) + b"\n")
    utterances, bad = read_manifest(tmp_path / "m.jsonl")
    assert [u.key for u in utterances] == ["m.jsonl:1", "m.jsonl:3"]
    assert [(b.where, b.reason) for b in bad] == [("m.jsonl:2", "not UTF-8 text (byte 40); expected a JSON object")]


def test_an_empty_manifest_is_an_error(tmp_path):
    (tmp_path / "m.jsonl").write_text("\n\n")
    with pytest.raises(UserError, match="empty; expected one JSON object per line"):
        read_manifest(tmp_path / "m.jsonl")
    with pytest.raises(UserError, match="no such file"):
        read_manifest(tmp_path / "absent.jsonl")


def test_a_span_is_read_mono_at_the_model_rate_whatever_the_file(tmp_path):
    rate = 44100
    t = np.arange(int(3 * rate)) / rate
    stereo = np.stack([np.sin(2 * np.pi * 440 * t), np.zeros_like(t)], axis=1).astype(np.float32)
    soundfile.write(str(tmp_path / "s.wav"), stereo, rate, subtype="FLOAT")
    samples = read_utterance(Utterance("k", tmp_path / "s.wav", None, offset=1.0, duration=1.5), 16000,
                             block_seconds=0.25)
    assert abs(samples.size - 24000) <= 16 and samples.dtype == np.float32
    assert np.max(np.abs(samples)) == pytest.approx(0.5, abs=0.02)  # two channels averaged


@pytest.mark.parametrize("values, message", [(np.zeros(0), "contains no samples"),
                                             (np.array([0.0, np.nan]), "NaN/Inf sample")])
def test_unusable_audio_is_refused_with_the_reason(tmp_path, values, message):
    soundfile.write(str(tmp_path / "bad.wav"), values.astype(np.float32), 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match=message):
        read_utterance(Utterance("k", tmp_path / "bad.wav", None), 16000)


def test_loud_float_samples_are_taken_as_they_are(tmp_path):
    """Full scale is ±1, but a float file may hold louder samples: read, not refused, and the
    message for bad samples no longer claims a [-1, 1] bound the reader does not hold."""
    loud = _wav(tmp_path / "loud.wav", 1.0, value=0.5)
    samples, rate = soundfile.read(str(loud), dtype="float32")
    soundfile.write(str(loud), samples * 100, rate, subtype="FLOAT")
    assert np.allclose(read_utterance(Utterance("k", loud, None), 16000), 50.0)
    soundfile.write(str(tmp_path / "nan.wav"), np.array([0.0, np.nan], np.float32), 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match=r"expected finite samples \(full scale is ±1\)$"):
        read_utterance(Utterance("k", tmp_path / "nan.wav", None), 16000)


def _silent_decoder(*_):
    return Decoded([5, 6], [0, 1])


def test_a_reference_with_no_word_after_normalising_is_measured_for_agreement_only(tmp_path):
    """A punctuation-only reference used to score every hypothesis word as an insertion over no
    reference word (900 % on one utterance)."""
    _wav(tmp_path / "a.wav", 1.0)
    utterances = [Utterance("m:1", tmp_path / "a.wav", "..."), Utterance("m:2", tmp_path / "a.wav", "hello there")]
    said = []
    result = evaluate(utterances, {"nemo_full": _silent_decoder, "nemo_windowed": _silent_decoder,
                                   "export": _silent_decoder}, lambda tokens: "hello there" if tokens else "", DIMS,
                      normalizer="basic", report=said.append)
    assert said[0] == ("1 reference text(s) hold no word after the basic normaliser (punctuation or nothing): "
                       "measured for agreement with NeMo only, e.g. ['m:1']")
    assert ["wer" in r for r in result.records] == [False, True]
    assert result.wer("export") == 0.0 and result.failures() == []


def test_silence_is_valid_audio(tmp_path):
    assert np.all(read_utterance(Utterance("k", _wav(tmp_path / "z.wav", 2.0, value=0.0), None), 16000) == 0)


@pytest.mark.parametrize("samples", [16000, 240000])
def test_audio_up_to_the_window_is_one_window(samples):
    (window,) = plan_windows(samples, DIMS)
    assert (window.start, window.length, window.first_frame, window.keep) == (0, samples, 0, (0, math.inf))


@pytest.mark.parametrize("seconds", [15.01, 29.0, 61.3, 120.0])
def test_windows_overlap_by_two_seconds_on_frame_boundaries_and_share_every_frame_out(seconds):
    samples = int(seconds * 16000)
    windows = plan_windows(samples, DIMS)
    assert windows[0].start == 0 and windows[-1].start + windows[-1].length == samples
    for a, b in pairwise(windows):
        assert b.start % DIMS.encoder_hop == 0 and a.start + DIMS.max_audio_samples - b.start >= 2 * 16000
        assert a.keep[1] == b.keep[0]  # every frame belongs to exactly one window
        assert b.first_frame < b.keep[0] < a.first_frame + DIMS.max_audio_samples // DIMS.encoder_hop
    assert windows[0].keep[0] == 0 and windows[-1].keep[1] == math.inf
    assert all(w.length <= DIMS.max_audio_samples for w in windows)


def test_the_merge_keeps_each_frame_from_one_window_in_the_utterance_frames():
    samples = np.zeros(int(30 * 16000), np.float32)
    windows = plan_windows(samples.size, DIMS)
    assert len(windows) == 3

    def decode(window, length):  # one token on every 10th frame of the window, its id the frame
        frames = list(range(0, math.ceil(length / DIMS.encoder_hop), 10))
        return Decoded(frames, frames)

    merged = decode_windowed(samples, DIMS, decode)
    assert merged.frames == sorted(merged.frames) and len(set(merged.frames)) == len(merged.frames)
    kept_by = [next(i for i, w in enumerate(windows) if w.keep[0] <= f < w.keep[1]) for f in merged.frames]
    assert [f - windows[k].first_frame for f, k in zip(merged.frames, kept_by, strict=True)] == merged.tokens


def test_first_difference_says_where_with_the_margin():
    nemo = Decoded([5, 6, 7], [0, 10, 20], [0.9, 0.8, 0.7], [3.0, 0.4, 2.0])
    same = Decoded([5, 6, 7], [0, 10, 20])
    assert first_difference(nemo, same, 0.08, lambda t: f"<{t[0]}>") is None
    found = first_difference(nemo, Decoded([5, 9, 7], [0, 10, 20]), 0.08, lambda t: f"<{t[0]}>")
    assert found == {"token_index": 1, "time_s": 0.8, "nemo_token": 6, "nemo_piece": "<6>", "export_token": 9,
                     "export_piece": "<9>", "nemo_margin": 0.4, "nemo_narrowest_margin_before": None}
    shorter = first_difference(nemo, Decoded([5, 6], [0, 10]), 0.08, str)
    assert shorter["token_index"] == 2 and shorter["export_token"] is None and shorter["time_s"] == 1.6


def _departing(decisions):
    """NeMo's tokens 5, 6, 7 at frames 0, 10, 20 with ``decisions``; the export says 9 for 6, at frame 10."""
    nemo = Decoded([5, 6, 7], [0, 10, 20], decisions=decisions)
    record = {"key": "set.jsonl:1", "first_difference": {
        "export": first_difference(nemo, Decoded([5, 9, 7], [0, 10, 20]), 0.08, lambda t: f"<{t[0]}>")}}
    return unexplained_difference(record, "export", 0.2)


def test_a_departure_is_explained_only_by_a_narrow_nemo_decision_at_or_before_it():
    """A blank decision is a decision too: narrow at frame 7, it explains a token that differs at
    frame 10 even though NeMo's margin on that token itself was wide; one at frame 12 does not."""
    wide = [(0, 3.0), (5, 2.5), (7, 1.5), (10, 4.0), (12, 0.01), (20, 2.0)]
    assert _departing(wide) == ("set.jsonl:1: export departs from NeMo at 0.8 s (token 1: '<9>' for '<6>'), yet "
                                "every NeMo decision up to there had a margin of at least 1.5 > 0.2")
    assert _departing([(0, 3.0), (5, 2.5), (7, 0.05), (10, 4.0)]) is None
    assert "margins are unknown" in _departing([])
    assert unexplained_difference({"key": "k", "first_difference": {"export": None}}, "export", 0.2) is None


def test_a_windowed_decoding_keeps_every_decision_in_the_utterances_frames():
    """Also the decisions whose tokens another window keeps: they shaped what this window kept."""
    samples = np.zeros(int(30 * 16000), np.float32)
    windows = plan_windows(samples.size, DIMS)

    def decode(window, length):  # a decision on every 4th frame of the window, its margin the frame
        frames = list(range(0, math.ceil(length / DIMS.encoder_hop), 4))
        return Decoded(decisions=[(f, float(f)) for f in frames])

    merged = decode_windowed(samples, DIMS, decode)
    per_window = [len(range(0, math.ceil(w.length / DIMS.encoder_hop), 4)) for w in windows]
    assert len(merged.decisions) == sum(per_window)
    assert all(frame - margin in {w.first_frame for w in windows} for frame, margin in merged.decisions)


def _record(key, reference, nemo, export, probs=(0.99,)):
    texts = {"nemo_full": nemo, "nemo_windowed": nemo, "export": export}
    return {"key": key, "seconds": 1.0, "reference": reference, "transcripts": texts,
            "token_probs": list(probs), "identical": {"export": nemo == export},
            "decode_seconds": {"nemo_full": 0.1, "nemo_windowed": 0.2, "export": 0.4},
            "first_difference": {"export": None},
            "wer": {label: word_errors(reference, t).as_dict() for label, t in texts.items()},
            "wer_raw": {label: word_errors(reference, t).as_dict() for label, t in texts.items()},
            "agreement": {"export": word_errors(nemo, export).as_dict()}}


def test_the_verdicts_exact_for_fp32_of_a_confident_model_bounded_for_the_rest():
    words = " ".join(["w"] * 100)
    records = [_record("a", words, words, words), _record("b", "x y", "x y", "x z")]
    bounded = Evaluation(["export"], "none", 0.005, [], records)
    # 1 word of 102 differs: 0.98 points, over the half-point bound
    assert "+0.98 points (at most ±0.50)" in bounded.failure("export")
    assert bounded.decomposition() == {"model": 0.0, "windowing": 0.0, "export": {"export": pytest.approx(100 / 102)}}
    loose = Evaluation(["export"], "none", 0.01, [], records)
    assert loose.failure("export") is None
    exact = Evaluation(["export"], "none", 0.01, ["export"], records)
    assert "1 of 2 transcripts differ" in exact.failure("export")
    unsure = Evaluation(["export"], "none", 0.01, ["export"], [_record("a", words, words, words, probs=(0.5,)),
                                                               _record("b", "x y", "x y", "x z", probs=(0.5,))])
    assert unsure.failure("export") is None, "exact transcripts are asked of a confident model only"
    assert bounded.block({})["status"] == "failed" and loose.block({})["worst"]["export"][0]["key"] == "b"
    assert loose.seconds_per_audio_minute() == {"nemo_full": pytest.approx(6.0), "nemo_windowed": pytest.approx(12.0),
                                                "export": pytest.approx(24.0)}


def test_a_run_says_up_front_how_much_audio_it_decodes_and_soon_how_long_it_will_take(tmp_path, monkeypatch):
    now = [100.0]
    monkeypatch.setattr(evaluation.time, "monotonic", lambda: now[0])
    utterances = [Utterance("a", _wav(tmp_path / "a.wav", 3.0), None),
                  Utterance("b", _wav(tmp_path / "b.wav", 60.0), None, offset=1.0, duration=30.0),
                  Utterance("c", _wav(tmp_path / "c.wav", 10.0), None),
                  Utterance("d", tmp_path / "missing.wav", None)]
    lines = []
    pace = Pace(utterances, lines.append)
    assert lines == ["4 utterance(s) to decode, 43 s of audio"]
    now[0] += 40  # the first utterance loads the packages and warms up: no pace is read from it
    pace.decoded(3.0)
    assert len(lines) == 1
    now[0] += evaluation.ESTIMATE_AFTER_SECONDS - 10
    pace.decoded(10.0)
    assert len(lines) == 1  # too early to tell
    now[0] += 10
    pace.decoded(0.0)
    # 10 s of audio in the 30 s since the first utterance: the 30 s left take 90 s
    assert lines[1] == ("13 s of 43 s of audio decoded in 1 min 10 s: about 1 min 30 s to go at the pace since the "
                        "first utterance")
    now[0] += 100
    pace.decoded(30.0)
    assert len(lines) == 2  # said once


def test_a_run_says_up_front_how_long_it_will_take_from_the_last_run_like_it(tmp_path, monkeypatch):
    now = [100.0]
    monkeypatch.setattr(evaluation.time, "monotonic", lambda: now[0])
    utterances = [Utterance("a", _wav(tmp_path / "a.wav", 20.0), None),
                  Utterance("b", _wav(tmp_path / "b.wav", 40.0), None)]
    kind = {"model": "abc", "backend": "mil"}
    lines = []
    first = Pace(utterances, lines.append, PaceBook(tmp_path, kind))
    assert lines == ["2 utterance(s) to decode, 1 min 00 s of audio"]  # nothing to go by yet
    now[0] += 90
    first.decoded(20.0)
    first.decoded(40.0)
    first.finished()  # 90 s for 60 s of audio: 1.5 s a second, loading included
    lines.clear()
    Pace(utterances[1:], lines.append, PaceBook(tmp_path, kind))
    assert lines == ["1 utterance(s) to decode, 40 s of audio; about 1 min 00 s at the pace of the last run like it "
                     "on this host"]
    lines.clear()
    Pace(utterances, lines.append, PaceBook(tmp_path, {**kind, "backend": "coreml"}))  # another kind of run
    assert lines == ["2 utterance(s) to decode, 1 min 00 s of audio"]
    (tmp_path / PaceBook.FILE).write_text("not json")  # unreadable: no estimate, and no failure
    lines.clear()
    Pace(utterances, lines.append, PaceBook(tmp_path, kind)).finished()
    assert lines == ["2 utterance(s) to decode, 1 min 00 s of audio"]


@pytest.mark.parametrize(("seconds", "text"), [(0.4, "0 s"), (59.6, "1 min 00 s"), (61, "1 min 01 s"),
                                               (3599, "59 min 59 s"), (3600 * 27 + 300, "27 h 05 min")])
def test_durations_read_as_a_person_reads_them(seconds, text):
    assert clock(seconds) == text


def test_a_streamed_decoding_carries_the_prediction_network_from_chunk_to_chunk():
    """Each chunk's frames decode from where the previous chunk's decoding stopped (NeMo's partial
    hypothesis), and each token's frame counts from the utterance's first committed frame."""
    chunks = [np.array([7.0, 7.0]), np.array([7.0, 9.0]), np.array([9.0])]  # each frame: the token it holds
    steps = []

    def decoder_step(token, h, c):
        steps.append(token)
        return np.full((1, 1, 1), token, np.float32), h, c

    def decide(frame, decoded):  # a frame's token is emitted once: blank after the decoder has seen it
        token = int(frame.item())
        return (DIMS.blank_id, 0.5, 1) if int(decoded.item()) == token else (token, 0.9, 1)

    margins = []

    def deciding_with_margin(frame, decoded):
        margins.append(float(frame.item()))
        return decide(frame, decoded)

    out = decode_streamed(chunks, lambda chunk: {"encoder": chunk.reshape(1, 1, -1)}, decoder_step,
                          deciding_with_margin, DIMS, margins)
    assert out.tokens == [7, 9] and out.frames == [0, 3]  # 7 not emitted again in chunk 2; 9 at frame 2 + 1
    assert out.probs == [0.9, 0.9] and out.margins == [7.0, 9.0]
    assert steps == [DIMS.blank_id, 7, 9]  # one blank start for the whole utterance

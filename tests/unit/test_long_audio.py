"""Long audio without a trained model: the strategies' windows and buffers, their merge, word
times by NeMo's rules (checked against NeMo's own timestamp code), seam losses and the manifest's
word times."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from itertools import pairwise

import numpy as np
import pytest
import torch
from nemo.collections.asr.models import EncDecRNNTBPEModel
from nemo.collections.asr.parts.utils.rnnt_utils import Hypothesis
from omegaconf import OmegaConf

from exporters.presets import PRESETS, model_config, write_tokenizer
from tests.unit.conftest import DIMS
from validation.evaluation import read_manifest
from validation.metrics import locate, seam_losses, timing_differences, timing_summary
from validation.timestamps import timed_words, token_spans
from validation.windowing import (
    STRATEGIES,
    Decoded,
    decode_windowed,
    plan_buffers,
    plan_quiet_windows,
    plan_windows,
    seams,
    window_stride,
)

HOP, RATE = DIMS.encoder_hop, DIMS.sample_rate


# -- the strategies' windows ---------------------------------------------------------------------

def _loud(seconds: float, quiet_at: list[float] = (), quiet_seconds: float = 0.4) -> np.ndarray:
    """Full-scale noise with a silent stretch of ``quiet_seconds`` starting at each ``quiet_at``."""
    samples = np.random.default_rng(0).uniform(-0.5, 0.5, int(seconds * RATE)).astype(np.float32)
    for at in quiet_at:
        samples[int(at * RATE):int((at + quiet_seconds) * RATE)] = 0.0
    return samples


def test_quiet_start_moves_each_later_window_into_the_pause_near_its_planned_start():
    stride = window_stride(DIMS) / RATE  # 12.96 s
    samples = _loud(40.0, quiet_at=[stride - 0.6, 2 * stride - 0.1])  # each within 1 s of its plan
    windows = plan_quiet_windows(samples, DIMS)
    assert len(windows) == 3
    for window, pause in zip(windows[1:], (stride - 0.6, 2 * stride - 0.1), strict=True):
        assert pause <= window.start / RATE <= pause + 0.4 - HOP / RATE  # a frame wholly inside the pause
        assert window.keep[0] == window.first_frame  # its tokens are kept from its own start
    assert windows[-1].start + windows[-1].length == samples.size
    assert [w.keep[1] for w in windows[:-1]] == [w.keep[0] for w in windows[1:]] and windows[-1].keep[1] == math.inf
    assert all(w.length <= DIMS.max_audio_samples for w in windows)


def test_quiet_start_without_a_pause_stays_within_a_second_of_the_plan():
    samples = _loud(40.0)
    planned_windows, quiet_windows = plan_windows(samples.size, DIMS), plan_quiet_windows(samples, DIMS)
    for planned, window in zip(planned_windows[1:], quiet_windows[1:], strict=True):
        assert abs(window.start - planned.start) <= RATE  # a frame within 1 s either side


def test_long_overlap_windows_overlap_by_at_least_four_seconds():
    windows = STRATEGIES["long-overlap"].plan(np.zeros(60 * RATE, np.float32), DIMS)
    for a, b in pairwise(windows):
        assert a.start + DIMS.max_audio_samples - b.start >= 4 * RATE
        assert a.keep[1] == b.keep[0]


@pytest.mark.parametrize("seconds", [3.0, 9.6, 14.0, 47.3])
def test_buffers_hold_each_chunk_with_its_context_and_every_frame_once(seconds):
    samples = int(seconds * RATE)
    buffers = plan_buffers(samples, DIMS)
    frames = math.ceil(samples / HOP)
    kept = [f for b in buffers for f in range(int(b.keep[0]), int(b.keep[1]))]
    assert kept == list(range(frames))
    for b in buffers:
        assert b.length <= DIMS.max_audio_samples and b.start == b.first_frame * HOP
        assert b.keep[0] - b.first_frame == min(20, b.keep[0])  # 1.6 s of left context where there is audio
        right = (b.start + b.length) // HOP - b.keep[1]
        assert right == 20 or b.start + b.length == samples  # 1.6 s of right context, or the recording's end


def test_buffered_decoding_carries_the_decoder_state_and_keeps_only_each_chunk():
    samples = np.zeros(30 * RATE, np.float32)
    calls = []

    def decode(window, length, frames=None, state=None):
        calls.append((frames, state))
        return Decoded([frames[0]], [0], durations=[1], state=("after", len(calls)))  # a token at the chunk's start

    merged = decode_windowed(samples, DIMS, decode, STRATEGIES["buffered"])
    buffers = plan_buffers(samples.size, DIMS)
    assert [state for _, state in calls] == [None, *(("after", k) for k in range(1, len(buffers)))]
    assert merged.frames == [int(b.keep[0]) for b in buffers]
    assert [frames for frames, _ in calls] == [(b.keep[0] - b.first_frame, b.keep[1] - b.first_frame)
                                               for b in buffers]


def test_seams_are_where_the_kept_frames_switch_windows():
    windows = plan_windows(30 * RATE, DIMS)
    assert seams(windows) == [int(w.keep[0]) for w in windows[1:]] and len(seams(windows)) == 2
    assert seams(plan_windows(RATE, DIMS)) == []


# -- word times ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def punctuated(tmp_path_factory):
    """A TDT model whose tokenizer has punctuation pieces: NeMo's own decoding computes word
    timestamps for it."""
    rng = np.random.default_rng(0)
    words = "the cat sees a dog near the river today and then".split()
    sentences = [" ".join(rng.choice(words, 6)) + str(rng.choice([".", ",", "?", "!"])) + " "
                 + " ".join(rng.choice(words, 3)) + "." for _ in range(3000)]
    directory = tmp_path_factory.mktemp("punctuated")
    write_tokenizer(sentences, 64, directory)
    cfg = OmegaConf.create(model_config(replace(PRESETS["tiny"], vocab_size=64), str(directory)))
    return EncDecRNNTBPEModel(cfg=cfg, trainer=None).eval()


def test_word_times_are_nemos_for_random_transcripts_with_punctuation(punctuated):
    tokenizer, decoding = punctuated.tokenizer, punctuated.decoding
    assert decoding.supported_punctuation >= {".", ","}
    rng = np.random.default_rng(1)
    for _ in range(200):
        count = int(rng.integers(1, 25))
        ids = [int(i) for i in rng.integers(0, tokenizer.vocab_size, count)]
        frames = sorted(int(f) for f in rng.integers(0, 200, count))
        durations = [int(d) for d in rng.integers(0, 5, count)]
        hypothesis = Hypothesis(score=0.0, y_sequence=torch.tensor(ids), timestamp=torch.tensor(frames),
                                token_duration=torch.tensor(durations))
        theirs = decoding.compute_rnnt_timestamps(hypothesis, "word").timestamp["word"]
        ours = timed_words(tokenizer.ids_to_tokens(ids), [tokenizer.ids_to_text([i]) for i in ids], frames,
                           durations, decoding.supported_punctuation, tokenizer.tokens_to_text)
        assert [(w.word, w.start, w.end) for w in ours] == \
            [(w["word"], w["start_offset"], w["end_offset"]) for w in theirs], (ids, frames, durations)


def test_a_full_stop_decided_after_a_pause_does_not_push_its_word_end_into_the_pause():
    # "dog" emitted at frame 10 for 2 frames; "." emitted 20 frames later with a duration of 4
    words = timed_words(["▁dog", "."], ["dog", "."], [10, 30], [2, 4], {"."}, "".join)
    assert [(w.word, w.start, w.end) for w in words] == [("▁dog.", 10, 12)]
    assert token_spans([10, 30], [2, 4], [False, True]) == [(10, 12), (12, 12)]
    # without the rule the word would end at frame 34: 1.76 s late at 80 ms a frame
    assert timed_words(["▁dog", "."], ["dog", "."], [10, 30], [2, 4], set(), "".join)[0].end == 34


# -- seam losses and timing ----------------------------------------------------------------------

REFERENCE = [("the", 0.0, 0.2), ("cat", 0.3, 0.6), ("sees", 0.7, 1.0), ("a", 1.1, 1.2), ("dog", 1.3, 1.6),
             ("today", 5.0, 5.5), ("again", 5.6, 6.0)]


def test_seam_losses_count_errors_near_a_seam_apart_from_the_rest():
    hypothesis = [("The", 0.0, 0.2), ("cat", 0.3, 0.6), ("a", 1.1, 1.2), ("dog", 1.3, 1.6), ("dog", 1.6, 1.7),
                  ("today,", 5.1, 5.6), ("gain", 5.6, 6.0)]
    losses = seam_losses(REFERENCE, hypothesis, seams=[1.5])
    # within 1 s of the seam at 1.5 s: cat, sees, a, dog; "sees" dropped, "dog" said twice
    assert losses["near_seams"] == {"words": 4, "dropped": 1, "substituted": 0, "inserted": 1, "duplicated": 1,
                                    "rate": 0.5}
    # elsewhere: the, today, again; "again" heard as "gain" (case and punctuation do not count)
    assert losses["elsewhere"] == {"words": 3, "dropped": 0, "substituted": 1, "inserted": 0, "duplicated": 0,
                                   "rate": 1 / 3}
    assert seam_losses(REFERENCE, REFERENCE, seams=[])["near_seams"]["words"] == 0


def test_reference_words_without_times_are_placed_by_a_hypothesis():
    placed = locate("the cat sees a dog".split(), [("the", 0.0, 0.2), ("cat", 0.3, 0.6), ("dog", 1.3, 1.6)])
    assert placed == [("the", 0.0, 0.2), ("cat", 0.3, 0.6), ("sees", 0.6, 0.6), ("a", 0.6, 0.6), ("dog", 1.3, 1.6)]


def test_timing_differences_of_shared_words_in_milliseconds():
    later = [(w, a + 0.08, b + (0.16 if w == "dog" else 0.0)) for w, a, b in REFERENCE]
    summary = timing_summary(timing_differences(REFERENCE, later))
    assert summary["words"] == 7
    assert summary["mean_abs_start_ms"] == pytest.approx(80.0) and summary["max_abs_start_ms"] == pytest.approx(80.0)
    assert summary["max_abs_end_ms"] == pytest.approx(160.0)
    assert summary["mean_abs_end_ms"] == pytest.approx(160.0 / 7, abs=0.1)


# -- the manifest's word times -------------------------------------------------------------------

def test_word_times_in_a_manifest_are_read_and_bad_ones_refused(tmp_path):
    (tmp_path / "a.wav").write_bytes(b"")
    lines = [{"audio_filepath": "a.wav", "text": "two words", "word_times": [[0.1, 0.4], [0.5, 0.9]]},
             {"audio_filepath": "a.wav", "text": "two words", "word_times": [[0.1, 0.4]]},
             {"audio_filepath": "a.wav", "text": "two words", "word_times": "soon"},
             {"audio_filepath": "a.wav", "text": "two words", "word_times": [[0.5, 0.4], [0.5, 0.9]]}]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    utterances, bad = read_manifest(tmp_path / "m.jsonl")
    assert [u.word_times for u in utterances] == [((0.1, 0.4), (0.5, 0.9))]
    assert [b.where for b in bad] == ["m.jsonl:2", "m.jsonl:3", "m.jsonl:4"]
    assert "1 entries for the 2 words" in bad[0].reason and "list of [start, end]" in bad[1].reason
    assert "0 <= start <= end" in bad[2].reason

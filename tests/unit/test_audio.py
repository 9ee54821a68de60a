"""Clips: recordings of any rate and layout fitted to the window, bad audio refused, espeak-ng speech."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest
import soundfile

from infra.cache import ExportCache
from tests.unit.conftest import DIMS
from validation.audio import (
    EDGE_CLIPS,
    AudioAdjustedWarning,
    AudioError,
    Clip,
    edge_clips,
    espeak_say_timed,
    load_audio_file,
    synthetic_speech,
)


def _tone(seconds, rate, channels=1):
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.5 * np.sin(2 * np.pi * 440 * t)
    return np.stack([wave] * channels, axis=1).astype(np.float32)


def test_stereo_44k_flac_becomes_16k_mono_padded(tmp_path):
    path = tmp_path / "talk.flac"
    soundfile.write(str(path), _tone(2.0, 44100, channels=2), 44100)
    with pytest.warns(AudioAdjustedWarning, match="padded from 2.00 s"):
        clip = load_audio_file(path, DIMS)
    assert clip.samples.shape == (240000,) and clip.samples.dtype == np.float32
    assert clip.length == 32000
    assert not clip.samples[32000:].any()
    assert clip.notes[:2] == ("mixed 2 channels to mono", "resampled from 44100 Hz to 16000 Hz")
    # the tone survives resampling: 440 Hz peak in the spectrum
    spectrum = np.abs(np.fft.rfft(clip.samples[:32000]))
    assert abs(np.argmax(spectrum) * 16000 / 32000 - 440) <= 1


def test_long_recording_is_trimmed_with_a_warning(tmp_path):
    path = tmp_path / "long.wav"
    soundfile.write(str(path), _tone(20.0, 16000), 16000)
    with pytest.warns(AudioAdjustedWarning, match="trimmed from 20.00 s to the 15 s window"):
        clip = load_audio_file(path, DIMS)
    assert clip.length == 240000 and clip.name == "audio-long"


@pytest.mark.parametrize("content, message", [
    (np.zeros((0, 1), np.float32), "contains no samples"),
    (np.array([[0.1], [np.nan], [np.inf]], np.float32), "2 NaN/Inf sample\\(s\\), the first at index 1"),
])
def test_unusable_audio_is_refused(tmp_path, content, message):
    path = tmp_path / "bad.wav"
    soundfile.write(str(path), content, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match=message):
        load_audio_file(path, DIMS)


def test_unreadable_and_missing_files_are_refused(tmp_path):
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"not audio at all")
    with pytest.raises(AudioError, match="not a readable audio file"):
        load_audio_file(junk, DIMS)
    with pytest.raises(AudioError, match="no such file"):
        load_audio_file(tmp_path / "absent.wav", DIMS)


def test_espeak_speech_is_voiced_and_fits_the_window(tmp_path):
    cache = ExportCache(tmp_path)
    clip = synthetic_speech(cache, DIMS)
    assert 12 * 16000 < clip.length <= 240000
    voiced = clip.samples[: clip.length]
    frames = voiced[: voiced.size // 1600 * 1600].reshape(-1, 1600)  # 100 ms frames
    loud = np.sqrt((frames ** 2).mean(axis=1)) > 0.01
    assert 0.5 < loud.mean() < 1.0, "speech has pauses, and is mostly voiced"
    again = synthetic_speech(cache, DIMS)  # from the cache
    np.testing.assert_array_equal(again.samples, clip.samples)


def test_edge_clips():
    rng = np.random.default_rng(1)
    speech = Clip("speech", (0.3 * rng.standard_normal(240000)).astype(np.float32), 230000, "noise as speech")
    clips = {c.name: c for c in edge_clips(speech, DIMS)}
    assert tuple(clips) == EDGE_CLIPS
    assert not clips["silence"].samples.any()
    assert np.all(clips["dc"].samples == clips["dc"].samples[0]) and clips["dc"].samples[0] != 0
    assert np.abs(clips["clipping"].samples).max() == 1.0 and (np.abs(clips["clipping"].samples) == 1.0).mean() > 0.5
    assert clips["speech_1s"].length == 16000 and not clips["speech_1s"].samples[16000:].any()
    np.testing.assert_array_equal(clips["speech_1s"].samples[:16000], speech.samples[:16000])
    assert 0.09 < clips["white_noise"].samples.std() < 0.11


def test_timed_speech_does_not_depend_on_what_was_spoken_before():
    """Spoken in one process, libespeak-ng carried state from text to text: the same sentence in
    the same voice came out different after others, so a stress set rendered alone differed from
    one rendered after another set under the same cache key."""
    first = espeak_say_timed("the quiet farmer sees anna near the old bridge", 16000, "en-gb+f3", 140, 27)
    for voice in ("en-us+m3", "en-029+f2", "en-gb-scotland+m1"):
        espeak_say_timed("every day sarah wants the loud station with the green fish", 16000, voice, 172, 69)
    again = espeak_say_timed("the quiet farmer sees anna near the old bridge", 16000, "en-gb+f3", 140, 27)
    assert np.array_equal(first[0], again[0]) and first[1] == again[1]


def test_every_word_is_timed_in_order_within_the_speech():
    text = "every day sarah wants the loud station with the green fish"  # espeak speaks "with the" as one
    audio, spans = espeak_say_timed(text, 16000, "en-gb+f4", 166, 47)
    assert len(spans) == len(text.split())
    assert all(0 <= a < b <= audio.size / 16000 for a, b in spans)
    assert all(b <= c + 1e-9 for (_, b), (c, _) in pairwise(spans))  # each ends before the next starts

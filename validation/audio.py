"""The audio the parity checks run on: synthetic speech, the user's recording, and edge cases.

Every clip fills the fixed export window (``ModelDims.max_audio_samples`` at 16 kHz) and keeps
its true length, which the preprocessor honours (per-feature normalisation uses valid frames).
"""

from __future__ import annotations

import ctypes.util
import functools
import io
import json
import math
import re
import shutil
import subprocess
import sys
import warnings
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import numpy as np
import soundfile
import soxr

from exporters.components import MAX_AUDIO_SECONDS, ModelDims
from infra.cache import ExportCache, cache_key
from infra.errors import UserError

# 14.7 s of espeak-ng speech at 150 words per minute: it fits the 15 s window.
SPEECH_TEXT = (
    "Speech recognition on a phone has to match the model it came from. "
    "We export every part of the network, run it beside the original, "
    "and compare the numbers frame by frame, so a new converter cannot change a word unnoticed."
)
ESPEAK_VOICE = "en-us"
ESPEAK_WORDS_PER_MINUTE = 150


EDGE_CLIPS = ("silence", "dc", "clipping", "white_noise", "speech_1s")


class AudioError(UserError):
    """Audio that cannot be used: the message names the input and what is expected."""


class AudioAdjustedWarning(Warning):
    """A recording was padded or trimmed to the export window."""


@dataclass(frozen=True)
class Clip:
    name: str
    samples: np.ndarray  # float32 [max_audio_samples], zero-padded past ``length``
    length: int  # valid samples
    description: str
    notes: tuple[str, ...] = ()  # what was done to fit the window

    def inputs(self) -> dict[str, np.ndarray]:
        """The preprocessor's (and mel_encoder's) inputs."""
        return {"audio_signal": self.samples[None, :], "audio_length": np.array([self.length], np.int32)}

    def as_dict(self) -> dict:
        return {"name": self.name, "description": self.description, "valid_samples": self.length,
                "notes": list(self.notes)}


def check_samples(samples: np.ndarray, what: str) -> None:
    """Refuse audio no model should be run on, before any model runs. Finite samples of any size
    are taken as they are: full scale is ±1, but float files may hold louder samples (headroom),
    and the front end's per-feature normalisation takes out the level."""
    if samples.size == 0:
        raise AudioError(f"{what}: contains no samples; expected up to 15 s of audio")
    bad = ~np.isfinite(samples)
    if bad.any():
        first = int(np.flatnonzero(bad.ravel())[0])
        raise AudioError(f"{what}: {int(bad.sum())} NaN/Inf sample(s), the first at index {first}; "
                         "expected finite samples (full scale is ±1)")


def fit_window(samples: np.ndarray, dims: ModelDims, name: str, description: str, notes=()) -> Clip:
    """Pad (or trim) mono 16 kHz ``samples`` to the window, noting a trim or a pad."""
    notes = list(notes)
    window = dims.max_audio_samples
    seconds = samples.size / dims.sample_rate
    if samples.size > window:
        notes.append(f"trimmed from {seconds:.2f} s to the {dims.max_audio_seconds:g} s window")
        samples = samples[:window]
    elif samples.size < window:
        notes.append(f"padded from {seconds:.2f} s to the {dims.max_audio_seconds:g} s window (true length kept)")
    padded = np.zeros(window, np.float32)
    padded[: samples.size] = samples
    return Clip(name, padded, int(samples.size), description, tuple(notes))


def audio_info(path: Path, what: str):
    """``soundfile.info`` of a recording, refused with the reason if it is none."""
    if path.is_dir():
        raise AudioError(f"{what}: is a directory; expected an audio file")
    if not path.is_file():
        raise AudioError(f"{what}: no such file")
    try:
        return soundfile.info(str(path))
    except (soundfile.LibsndfileError, RuntimeError, TypeError) as e:
        raise AudioError(f"{what}: not a readable audio file ({e}); expected WAV, FLAC, OGG or another "
                         f"format libsndfile reads") from None


def read_audio(path: Path, max_seconds: float = MAX_AUDIO_SECONDS) -> tuple[np.ndarray, int, list[str]]:
    """The first ``max_seconds`` of a recording as mono float32 at its own rate, refused with the
    reason if unusable. Only those frames are decoded: memory does not grow with the file."""
    path = Path(path)
    info = audio_info(path, f"--audio {path}")
    try:
        frames = min(info.frames, math.ceil(max_seconds * info.samplerate))
        data, rate = soundfile.read(str(path), frames=frames, dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, TypeError) as e:
        raise AudioError(f"--audio {path}: not a readable audio file ({e}); expected WAV, FLAC, OGG or another "
                         f"format libsndfile reads") from None
    check_samples(data, f"--audio {path}")
    notes = [f"mixed {data.shape[1]} channels to mono"] if data.shape[1] > 1 else []
    if info.frames > frames:
        notes.append(f"trimmed from {info.frames / rate:.2f} s to the {max_seconds:g} s window")
    return data.mean(axis=1), rate, notes


def recording_name(path: Path) -> str:
    """The clip name of a user's recording."""
    return f"audio-{Path(path).stem}"


def parity_clip_names(audio: Path | None) -> list[str]:
    """The clips the parity checks run, in order: the user's recording first, when given."""
    return ([recording_name(audio)] if audio else []) + ["speech", *EDGE_CLIPS]


def parity_clips(cache: ExportCache, dims: ModelDims, audio: Path | None = None) -> list[Clip]:
    """The user's recording (when given), the synthetic speech and the edge clips, in that order."""
    speech = synthetic_speech(cache, dims)
    return ([load_audio_file(audio, dims)] if audio else []) + [speech] + edge_clips(speech, dims)


def load_audio_file(path: Path, dims: ModelDims) -> Clip:
    """Any rate, channel count and format libsndfile reads, as 16 kHz mono in the window."""
    path = Path(path)
    mono, rate, notes = read_audio(path, dims.max_audio_seconds)
    if rate != dims.sample_rate:
        notes.append(f"resampled from {rate} Hz to {dims.sample_rate} Hz")
        mono = soxr.resample(mono, rate, dims.sample_rate).astype(np.float32)
    clip = fit_window(mono, dims, recording_name(path), f"recording {path.name}", notes)
    adjusted = [n for n in clip.notes if n.startswith(("trimmed", "padded"))]
    if adjusted:
        warnings.warn(f"--audio {path}: {adjusted[0]}", AudioAdjustedWarning, stacklevel=2)
    return clip


def espeak_executable() -> str:
    executable = shutil.which("espeak-ng")
    if executable is None:
        raise AudioError("espeak-ng is not installed; the parity checks synthesise their speech with it. "
                         "Install it (Debian/Ubuntu: apt-get install espeak-ng; macOS: brew install espeak-ng)")
    return executable


def espeak_version() -> str:
    return subprocess.run([espeak_executable(), "--version"], capture_output=True, text=True, check=True).stdout.strip()


def espeak_say(text: str, sample_rate: int, voice: str = ESPEAK_VOICE, words_per_minute: int = ESPEAK_WORDS_PER_MINUTE,
               pitch: int = 50) -> np.ndarray:
    """``text`` spoken by espeak-ng (``voice`` may carry a variant, e.g. ``en-gb+f3``), as float32
    samples at ``sample_rate``."""
    command = [espeak_executable(), "-v", voice, "-s", str(words_per_minute), "-p", str(pitch), "--stdout", text]
    wav = subprocess.run(command, check=True, capture_output=True).stdout
    data, rate = soundfile.read(io.BytesIO(wav), dtype="float32")
    return soxr.resample(data, rate, sample_rate).astype(np.float32) if rate != sample_rate else data


WORD_FLOOR_DB = -35.0  # a word's span is trimmed to where its 10 ms energy is within this of the utterance's peak
_ESPEAK_WORDS = Path(__file__).with_name("espeak_words.py")


@functools.lru_cache(maxsize=1)
def espeak_library() -> str:
    """libespeak-ng: the library beside the espeak-ng executable (Homebrew's lib/ on macOS) or the
    system's."""
    prefix = Path(espeak_executable()).resolve().parent.parent / "lib"
    found = [str(p) for p in (*prefix.glob("libespeak-ng.so*"), *prefix.glob("libespeak-ng*.dylib"))]
    name = next(iter(sorted(found)), None) or ctypes.util.find_library("espeak-ng")
    if name is None:
        raise AudioError("libespeak-ng (the library of espeak-ng) is not found; the stress sets take their word "
                         "times from it. Install espeak-ng with its library (Debian/Ubuntu: apt-get install "
                         "espeak-ng; macOS: brew install espeak-ng)")
    return name


def espeak_say_timed(text: str, sample_rate: int, voice: str = ESPEAK_VOICE,
                     words_per_minute: int = ESPEAK_WORDS_PER_MINUTE, pitch: int = 50
                     ) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """``text`` spoken by espeak-ng's library in a process of its own (``validation.espeak_words``:
    the library's state would otherwise carry from one text to the next), and each word's (start,
    end) in seconds: the synthesiser's own word events place each word's start; a word ends where
    the next begins, both trimmed to where its energy is within ``WORD_FLOOR_DB`` of the
    utterance's peak."""
    done = subprocess.run([sys.executable, str(_ESPEAK_WORDS), espeak_library(), voice, str(words_per_minute),
                           str(pitch), text], capture_output=True, check=False)
    if done.returncode != 0:
        raise AudioError(done.stderr.decode("utf-8", "replace").strip().splitlines()[-1] if done.stderr
                         else f"espeak-ng could not speak {text!r}")
    header, pcm = done.stdout.split(b"\n", 1)
    found = json.loads(header)
    rate = found["rate"]
    audio = np.frombuffer(pcm, "<i2").astype(np.float32) / 32768.0
    starts = {int(position): sample for position, sample in found["starts"].items()}
    spans = _trimmed_spans(audio, _word_bounds(text, starts, audio.size), rate)
    if rate != sample_rate:
        audio = soxr.resample(audio, rate, sample_rate).astype(np.float32)
    return audio, spans


def _word_bounds(text: str, starts: dict[int, int], samples: int) -> list[int]:
    """Each word's first sample, and the end. espeak-ng speaks some function words with the word
    before them (one event for "with the"): such a run's samples are shared by its letters."""
    words = [(m.start() + 1, len(m.group())) for m in re.finditer(r"\S+", text)]
    anchors = [i for i, (position, _) in enumerate(words) if position in starts] or [0]
    bounds = [0] * len(words)
    for n, first in enumerate(anchors):
        last = anchors[n + 1] if n + 1 < len(anchors) else len(words)
        begin = starts.get(words[first][0], 0) if n else 0
        end = starts[words[last][0]] if last < len(words) else samples
        letters = np.cumsum([0, *(length for _, length in words[first:last])])
        for i in range(first, last):
            bounds[i] = begin + int((end - begin) * letters[i - first] / letters[-1])
    return [*bounds, samples]


def _trimmed_spans(audio: np.ndarray, bounds: list[int], rate: int) -> list[tuple[float, float]]:
    frame = rate // 100
    energy = np.array([float(np.mean(audio[i:i + frame] ** 2)) for i in range(0, audio.size, frame)]) + 1e-12
    loud = 10 * np.log10(energy / energy.max()) > WORD_FLOOR_DB
    spans = []
    for start, end in pairwise(bounds):
        frames = np.flatnonzero(loud[start // frame: max(start // frame + 1, end // frame)]) + start // frame
        first, last = (frames[0], frames[-1] + 1) if frames.size else (start // frame, end // frame)
        spans.append((float(first * frame / rate), float(min(last * frame, end) / rate)))
    return spans


def synthetic_speech(cache: ExportCache, dims: ModelDims) -> Clip:
    """:data:`SPEECH_TEXT` spoken by espeak-ng, resampled to the model's rate; cached by text, voice
    and espeak-ng version."""
    version = espeak_version()
    key = cache_key(kind="espeak-speech", text=SPEECH_TEXT, voice=ESPEAK_VOICE, wpm=ESPEAK_WORDS_PER_MINUTE,
                    espeak=version, sample_rate=dims.sample_rate)

    def build(tmp: Path) -> dict:
        samples = espeak_say(SPEECH_TEXT, dims.sample_rate, voice=ESPEAK_VOICE,
                             words_per_minute=ESPEAK_WORDS_PER_MINUTE)
        soundfile.write(str(tmp / "speech.wav"), samples, dims.sample_rate, subtype="FLOAT")
        return {"espeak": version}

    entry = cache.get_or_build(key, build)
    samples, _ = soundfile.read(str(entry.path / "speech.wav"), dtype="float32")
    clip = fit_window(samples, dims, "speech", f"espeak-ng {ESPEAK_VOICE} speech at {ESPEAK_WORDS_PER_MINUTE} wpm")
    return Clip(clip.name, clip.samples, clip.length, clip.description)  # the pad is by design, not a note


def edge_clips(speech: Clip, dims: ModelDims, seed: int = 0) -> list[Clip]:
    """:data:`EDGE_CLIPS`: silence, DC, full-scale clipping, white noise, and 1 s of speech padded
    to the window."""
    window, rate = dims.max_audio_samples, dims.sample_rate
    rng = np.random.default_rng(seed)
    one_second = fit_window(speech.samples[:rate], dims, "speech_1s", "the first 1 s of the speech, zero-padded")
    return [
        Clip("silence", np.zeros(window, np.float32), window, "digital silence"),
        Clip("dc", np.full(window, 0.5, np.float32), window, "a constant 0.5 (DC)"),
        Clip("clipping", np.clip(speech.samples * 20.0, -1.0, 1.0).astype(np.float32), speech.length,
             "the speech at 20x gain, clipped to full scale"),
        Clip("white_noise", (0.1 * rng.standard_normal(window)).astype(np.float32), window,
             "white noise, RMS 0.1"),
        Clip(one_second.name, one_second.samples, one_second.length, one_second.description),
    ]

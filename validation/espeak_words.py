"""Speak one text with libespeak-ng and report where each word starts: run as a script, one
process per text (``validation.audio.espeak_say_timed`` runs it).

The library carries state from one synthesis to the next within a process (the same text in the
same voice came out different after 30 other sentences), so a set rendered in one process would
depend on what was spoken before it. A fresh process per text is what the ``espeak-ng`` command
gives too. Standard library only, so the process starts in a few milliseconds.

Usage: ``python espeak_words.py LIBRARY VOICE WORDS_PER_MINUTE PITCH TEXT``. Writes one JSON line
(``rate``, ``samples``, ``starts``: a word's first character, 1-based, to its first sample), then
the samples as 16-bit little-endian PCM.
"""

from __future__ import annotations

import ctypes
import json
import sys


class _Event(ctypes.Structure):
    """libespeak-ng's ``espeak_EVENT`` (speak_lib.h)."""

    _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint), ("text_position", ctypes.c_int),
                ("length", ctypes.c_int), ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
                ("user_data", ctypes.c_void_p), ("id", ctypes.c_char * 8)]


WORD_EVENT, LIST_TERMINATED = 1, 0
SYNCHRONOUS, RATE, PITCH, CHARS_UTF8, POS_CHARACTER = 2, 1, 3, 1, 1
CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))


def speak(library_path: str, voice: str, words_per_minute: int, pitch: int, text: str) -> tuple[dict, bytes]:
    library = ctypes.CDLL(library_path)
    rate = library.espeak_Initialize(SYNCHRONOUS, 0, None, 0)
    if rate <= 0:
        raise SystemExit(f"libespeak-ng ({library_path}) could not be initialised (espeak_Initialize: {rate})")
    pcm, starts = bytearray(), {}

    def receive(wav, count, events):
        if count > 0 and wav:
            pcm.extend(ctypes.string_at(wav, count * 2))
        i = 0
        while events[i].type != LIST_TERMINATED:
            if events[i].type == WORD_EVENT and events[i].length > 0:  # a word of the text
                starts[events[i].text_position] = events[i].sample
            i += 1
        return 0

    callback = CALLBACK(receive)
    library.espeak_SetSynthCallback(callback)
    # the library knows British English by its file name ("en"); the command line by its language
    name = "en" + voice[len("en-gb"):] if voice == "en-gb" or voice.startswith("en-gb+") else voice
    if library.espeak_SetVoiceByName(name.encode()) != 0:
        raise SystemExit(f"espeak-ng has no voice {voice!r}")
    library.espeak_SetParameter(RATE, words_per_minute, 0)
    library.espeak_SetParameter(PITCH, pitch, 0)
    encoded = text.encode("utf-8")
    status = library.espeak_Synth(encoded, len(encoded) + 1, 0, POS_CHARACTER, 0, CHARS_UTF8, None, None)
    library.espeak_Synchronize()
    if status != 0 or not pcm:
        raise SystemExit(f"espeak-ng could not speak {text!r} (espeak_Synth returned {status})")
    return {"rate": rate, "samples": len(pcm) // 2, "starts": starts}, bytes(pcm)


if __name__ == "__main__":
    header, pcm = speak(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
    sys.stdout.buffer.write(json.dumps(header).encode() + b"\n" + pcm)

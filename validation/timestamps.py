"""Word start and end times from a TDT transcript, by NeMo's rules (``AbstractRNNTDecoding``'s
TDT offsets, ``_refine_timestamps_tdt`` and ``timestamp_utils.get_words_offsets``), so that an app
that times words from the exported decoder's decisions gets NeMo's times.

- A token starts at the encoder frame it was emitted at and ends ``duration`` frames later (the
  duration the joint predicted with it).
- A punctuation token gets no time of its own: it starts and ends where the token before it ends.
  Left with its predicted duration, a full stop decided after a pause pushes its word's end into
  the pause (one port found word ends up to 560 ms late).
- A word starts at a piece that begins one (SentencePiece's ``▁``: the piece differs from its
  text) and takes the pieces after it up to the next such piece; punctuation (a token whose text
  is one of the tokenizer's punctuation marks) joins the word before it. The word starts where its first
  token starts and ends where its last token ends.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from exporters.components import ModelDims


@dataclass(frozen=True)
class TimedWord:
    word: str
    start: int  # encoder frame
    end: int  # encoder frame


def token_spans(frames: list[int], durations: list[int], punctuation: list[bool]) -> list[tuple[int, int]]:
    """Each token's (start, end) in encoder frames, punctuation refined to the previous token's end."""
    spans = []
    for i, (frame, duration) in enumerate(zip(frames, durations, strict=True)):
        if punctuation[i] and spans:
            spans.append((spans[-1][1], spans[-1][1]))
        else:
            spans.append((frame, frame + duration))
    return spans


def word_groups(pieces: list[str], texts: list[str], punctuation: list[bool]) -> list[list[int]]:
    """The token indices of each word: a piece that begins a word (it differs from its text)
    starts one; punctuation joins the word before it."""
    words: list[list[int]] = []
    current: list[int] = []  # the word being built
    for i, (piece, text) in enumerate(zip(pieces, texts, strict=True)):
        if piece != text and not punctuation[i]:  # a piece that begins a word
            if current:
                words.append(current)
            current = [i]
        else:  # within the word, or a mark after it (or before any word: it begins one)
            current.append(i)
    if current:
        words.append(current)
    return words


def timed_words(pieces: list[str], texts: list[str], frames: list[int], durations: list[int],
                supported_punctuation: set[str], detokenize: Callable[[list[str]], str]) -> list[TimedWord]:
    """The words of a transcript with their start and end frames: its tokens' pieces, each token's
    text on its own (a piece that begins a word differs from it), emission frames and durations."""
    punctuation = [text in supported_punctuation for text in texts]
    spans = token_spans(frames, durations, punctuation)
    return [TimedWord(detokenize([pieces[i] for i in word]), spans[word[0]][0], spans[word[-1]][1])
            for word in word_groups(pieces, texts, punctuation)]


def _punctuation(model) -> set[str]:
    """NeMo's punctuation marks, from the model's vocabulary (none where its decoding names none)."""
    return set(getattr(model.decoding, "supported_punctuation", None) or ())


def _pieces_and_texts(tokenizer, tokens: list[int]) -> tuple[list[str], list[str]]:
    """Each token's SentencePiece piece, and its text on its own (they differ where a word begins)."""
    return (tokenizer.ids_to_tokens(list(tokens)) if tokens else []), [tokenizer.ids_to_text([t]) for t in tokens]


def word_timer(model, dims: ModelDims) -> Callable:
    """``(tokens, frames, durations) -> [(word, start s, end s)]`` for the model's tokenizer."""
    tokenizer, supported = model.tokenizer, _punctuation(model)
    seconds = dims.encoder_hop / dims.sample_rate

    def timed(tokens: list[int], frames: list[int], durations: list[int]) -> list[tuple[str, float, float]]:
        pieces, texts = _pieces_and_texts(tokenizer, tokens)
        words = timed_words(pieces, texts, frames, durations, supported, tokenizer.tokens_to_text)
        return [(w.word.strip(), round(w.start * seconds, 3), round(w.end * seconds, 3)) for w in words]

    return timed


def word_scorer(model, dims: ModelDims) -> Callable:
    """``(tokens, frames, probs) -> [(word, start s, confidence)]``: each word of a transcript with
    the lowest probability the decoder gave any of its tokens (None where it gave none)."""
    tokenizer, supported = model.tokenizer, _punctuation(model)
    seconds = dims.encoder_hop / dims.sample_rate

    def scored(tokens: list[int], frames: list[int], probs: list[float]) -> list[tuple[str, float, float | None]]:
        pieces, texts = _pieces_and_texts(tokenizer, tokens)
        groups = word_groups(pieces, texts, [text in supported for text in texts])
        return [(tokenizer.tokens_to_text([pieces[i] for i in word]).strip(), round(frames[word[0]] * seconds, 3),
                 min(probs[i] for i in word) if probs else None) for word in groups]

    return scored

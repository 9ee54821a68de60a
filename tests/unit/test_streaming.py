"""Cache-aware models without packages: which models stream, the chunk sizes they offer, the sizes of
a chunk, how a chunk is padded and how many of its frames a decoder keeps, and the options and
components that name streaming."""

from __future__ import annotations

import functools
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import sentencepiece as spm
from nemo.collections.asr.modules import ConformerEncoder
from nemo.collections.common.tokenizers import SentencePieceTokenizer

from exporters import sources
from exporters.components import ExportOptions, StreamingDims, get_components
from exporters.export import Exporter
from exporters.presets import PRESETS, build_model
from exporters.sources import ModelSource
from exporters.streaming import (
    MelChunk,
    as_exported,
    chunk_sizes,
    committed_frames,
    is_cache_aware,
    mel_chunks,
    streaming_dims,
)
from infra.cache import ExportCache
from infra.errors import UserError
from validation.streaming import DecisiveAgreement, EndOfUtterance, end_of_utterance_id


@pytest.fixture(scope="module")
def streaming_model():
    return build_model(PRESETS["tiny-streaming"])


def test_a_cache_aware_preset_streams_160_ms_chunks_of_nemos_sizes(streaming_model):
    assert is_cache_aware(streaming_model)
    assert chunk_sizes(streaming_model) == {160: [70, 1]}
    dims = streaming_dims(streaming_model)
    # NeMo's streaming config for [70, 1] and 8x subsampling: a first chunk of 9 mel frames, then
    # 16 new ones after 9 of look-back, 2 encoder frames kept per chunk, 70 frames of attention
    # cache, 8 of convolution cache
    assert (dims.first_chunk_mel_frames, dims.first_chunk_encoder_frames) == (9, 2)
    assert (dims.chunk_mel_frames, dims.shift_mel_frames, dims.pre_encode_cache_frames) == (25, 16, 9)
    assert (dims.valid_out_frames, dims.chunk_encoder_frames, dims.drop_extra_pre_encoded) == (2, 2, 2)
    assert (dims.cache_channel_frames, dims.cache_time_frames, dims.layers) == (70, 8, 2)
    assert dims.chunk_seconds == pytest.approx(0.16)
    assert StreamingDims.from_dict(dims.as_dict()) == dims


def test_a_chunk_size_the_model_was_not_trained_for_is_refused_naming_those_it_was(streaming_model):
    with pytest.raises(UserError, match=r"--chunk-ms 320: this model streams chunks of 160 ms; expected one"):
        streaming_dims(streaming_model, 320)


def test_an_offline_model_is_not_streamed_and_says_why():
    offline = SimpleNamespace(encoder=ConformerEncoder(feat_in=16, n_layers=1, d_model=16, n_heads=2))
    assert not is_cache_aware(offline)
    with pytest.raises(UserError, match=r"not cache-aware \(att_context_style 'regular', att_context_size "
                                          r"\[-1, -1\]\); streaming export needs a cache-aware FastConformer"):
        streaming_dims(offline)


def test_the_stream_is_cut_as_nemos_buffer_cuts_it(streaming_model):
    """0.5 s: 51 mel frames: a first chunk of 9, two of 9 look-back and 16 new frames, and the last
    10 new frames after their look-back; 0.25 s: 26 frames, whose last one is under the 8 new frames
    a later chunk needs and is dropped, as NeMo drops it."""
    chunks = mel_chunks(streaming_model, np.zeros(8000, np.float32))
    assert [c.length for c in chunks] == [9, 25, 25, 19]
    assert [(c.first, c.last) for c in chunks] == [(True, False), (False, False), (False, False), (False, True)]
    assert [c.component for c in chunks[:2]] == ["encoder_streaming_first", "encoder_streaming"]
    assert [c.length for c in mel_chunks(streaming_model, np.zeros(4000, np.float32))] == [9, 25]


def test_a_short_chunk_is_padded_with_zero_frames_to_the_packages_length():
    dims = StreamingDims(n_mels=2, encoder_dim=4, layers=1, first_chunk_mel_frames=2, first_chunk_encoder_frames=1,
                         chunk_mel_frames=5, shift_mel_frames=3,
                         pre_encode_cache_frames=2, drop_extra_pre_encoded=1, valid_out_frames=2,
                         chunk_encoder_frames=2, cache_channel_frames=3, cache_time_frames=2, att_context_size=(3, 1),
                         mel_hop_seconds=0.01)
    chunk = MelChunk(np.ones((1, 2, 3), np.float32), 3, first=False, last=True)
    assert chunk.padded(dims).tolist() == [[[1, 1, 1, 0, 0], [1, 1, 1, 0, 0]]] and chunk.short(dims)
    only = MelChunk(np.ones((1, 2, 1), np.float32), 1, first=True, last=True)  # a stream of one short chunk
    assert only.padded(dims).tolist() == [[[1, 0], [1, 0]]] and only.short(dims)
    assert committed_frames(3, dims, last=False) == 2  # the rest is look-ahead, recomputed by the next chunk
    assert committed_frames(3, dims, last=True) == 3


def test_chunk_ms_is_an_option_of_whole_positive_milliseconds_kept_out_of_old_cache_keys():
    assert "chunk_ms" not in ExportOptions().as_dict()
    assert ExportOptions(chunk_ms=160).as_dict()["chunk_ms"] == 160
    for bad in (0, -160, 160.5, True):
        with pytest.raises(UserError, match="chunk ms must be a positive whole number of milliseconds"):
            ExportOptions(chunk_ms=bad)


def test_the_streaming_encoder_is_a_component_by_name():
    assert [c.name for c in get_components(["encoder_streaming"])] == ["encoder_streaming"]
    with pytest.raises(UserError, match=r"unknown component\(s\) encoder_stream; expected any of: .*streaming"):
        get_components(["encoder_stream"])


def test_a_transcript_must_hold_the_tokens_before_nemos_first_near_tie():
    agreement = DecisiveAgreement(reference=[5, 6, 7, 8], exported=[5, 6, 9, 8], decisive_tokens=2,
                                  required_tokens=2, logit_error=0.04, median_token_prob=0.99)
    assert agreement.match and not agreement.problems()
    exact = DecisiveAgreement([5, 6, 7, 8], [5, 6, 9, 8], decisive_tokens=2, required_tokens=4, logit_error=1e-5,
                              median_token_prob=0.99)
    assert exact.problems() == ["transcript: the first 4 tokens must be NeMo's; they differ from token 2 "
                                "(1 edits over 4 tokens)"]


def test_a_model_is_set_to_the_exported_chunk_however_it_is_loaded(monkeypatch, tmp_path):
    """With several attention contexts, every component is exported, and compared, with the chunk's:
    a warm cache (model facts cached, model loaded later) used to leave the model at its default."""
    monkeypatch.setitem(PRESETS, "tiny-multi", replace(PRESETS["tiny-streaming"], name="tiny-multi",
                                                       att_context_sizes=((70, 1), (70, 0))))
    source = ModelSource("preset", "tiny-multi")
    cold = Exporter(source, ExportOptions(chunk_ms=80), ExportCache(tmp_path), progress=lambda m: None)
    assert cold.dims.vocab_size == 256  # the model facts cached: the next exporter finds them
    monkeypatch.setattr(sources, "_load", functools.lru_cache(maxsize=2)(sources._load.__wrapped__))  # a new process
    warm = Exporter(source, ExportOptions(chunk_ms=80), ExportCache(tmp_path), progress=lambda m: None)
    assert warm.streaming_dims.att_context_size == (70, 0)
    assert list(warm.model.encoder.att_context_size) == [70, 0]
    model = build_model(PRESETS["tiny-multi"])
    assert list(as_exported(model, {"streaming": {"chunk_ms": 80}}).encoder.att_context_size) == [70, 0]
    assert list(as_exported(model, {}).encoder.att_context_size) == [70, 0]  # no streaming packages: as it is


def test_the_end_of_utterance_token_is_the_tokenizers_eou_piece(tmp_path):
    """NeMo's EOU models carry ``<EOU>`` in their tokenizer; a tokenizer without it has none (the
    unknown piece a lookup falls back to is not taken for it)."""
    sentences = [f"word{i} and more words here" for i in range(300)]
    with_eou, without = tmp_path / "with", tmp_path / "without"
    for out, symbols in ((with_eou, ["<EOU>", "<EOB>"]), (without, [])):
        out.mkdir()
        spm.SentencePieceTrainer.train(sentence_iterator=iter(sentences), model_prefix=str(out / "tokenizer"),
                                       vocab_size=60, model_type="bpe", user_defined_symbols=symbols, bos_id=-1,
                                       eos_id=-1, minloglevel=2)
    tokenizer = SentencePieceTokenizer(str(with_eou / "tokenizer.model"))
    found = end_of_utterance_id(SimpleNamespace(tokenizer=tokenizer))
    assert found is not None and tokenizer.ids_to_tokens([found]) == ["<EOU>"]
    assert end_of_utterance_id(SimpleNamespace(tokenizer=SentencePieceTokenizer(str(without / "tokenizer.model")))) \
        is None


def test_end_of_utterance_emissions_are_gated_when_exact_and_reported_otherwise():
    same = EndOfUtterance(1024, [(3, 10), (9, 40)], [(3, 10), (9, 40)], exact=True)
    moved = EndOfUtterance(1024, [(3, 10), (9, 40)], [(3, 10), (10, 42)], exact=True)
    assert same.problems() == [] and same.as_dict()["match"]
    assert moved.problems() == ["end of utterance (token 1024): NeMo streaming emits it 2 time(s), the export 2; "
                                "the 2. differs: NeMo chunk 9 frame 40, export chunk 10 frame 42"]
    assert EndOfUtterance(1024, [(3, 10)], [], exact=False).problems() == []  # fp16: reported, not gated
    assert EndOfUtterance(1024, [(3, 10)], [], exact=True).problems()[0].endswith("NeMo chunk 3 frame 10, export none")

"""Cache-aware FastConformer models, streamed chunk by chunk as NeMo streams them.

NeMo streams a cache-aware encoder with ``CacheAwareStreamingAudioBuffer`` (the mel of the
stream, cut into a first chunk of new frames and later chunks that each begin with the previous
chunk's last mel frames) and ``cache_aware_stream_step`` (one chunk and the attention and
convolution caches in, the chunk's encoder frames and the next caches out). This module sets a
model up for one of its chunk sizes, measures the sizes the exported packages take
(``StreamingDims``: ``encoder_streaming_first`` for the first chunk, ``encoder_streaming`` for
the others), and runs NeMo's own streaming as the reference the packages are held to.

NeMo's buffer has a second mode (``pad_and_drop_preencoded=True``): the first chunk too gets
look-back frames, of zeros, which would let one package serve every chunk. It is not the model's
offline computation: on the trained streaming test model its encoder frames depart from the
offline encoder's by 2.9 (median per frame) and its transcript of the parity stream by 112 token
edits of 151, where the default mode matches the offline encoder to 1e-6. So the default mode,
and two packages, as the public streaming conversions ship them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from exporters.components import StreamingDims
from exporters.wrappers import EncoderStreaming, EncoderStreamingFirst
from infra.errors import UserError

STREAMING_STYLES = ("chunked_limited",)  # NeMo's attention styles that stream with caches, chunk by chunk
STREAMING_MODE = ("NeMo's cache-aware streaming: a first chunk of new mel frames (encoder_streaming_first), then "
                  "chunks of the previous chunk's last mel frames followed by new ones (encoder_streaming); a "
                  "stream's last chunk is padded with zero frames, mel_length says how many are real")


def describe_context(encoder) -> str:
    return (f"att_context_style {encoder.att_context_style!r}, att_context_size "
            f"{list(encoder.att_context_size)}")


def is_cache_aware(model) -> bool:
    """Whether ``model``'s encoder streams with caches: chunked attention with a bounded left context."""
    encoder = getattr(model, "encoder", None)
    return (hasattr(encoder, "cache_aware_stream_step") and getattr(encoder, "att_context_style", None)
            in STREAMING_STYLES and int(encoder.att_context_size[0]) >= 0)


def chunk_sizes(model) -> dict[int, list[int]]:
    """The chunk lengths the model was trained for, in milliseconds of new audio, with the
    attention context each stands for: chunked attention sees ``right + 1`` encoder frames."""
    encoder = model.encoder
    frame_ms = round(1000 * float(model.cfg.preprocessor.window_stride) * encoder.subsampling_factor)
    contexts = [list(map(int, c)) for c in encoder.att_context_size_all]
    return {frame_ms * (context[1] + 1): context for context in contexts}


def streaming_dims(model, chunk_ms: int | None = None) -> StreamingDims:
    """Set ``model`` up to stream chunks of ``chunk_ms`` (its default attention context when
    ``None``) and measure the chunk's sizes."""
    encoder = model.encoder
    if not is_cache_aware(model):
        raise UserError(f"the model's encoder is not cache-aware ({describe_context(encoder)}); streaming "
                          f"export needs a cache-aware FastConformer: att_context_style one of "
                          f"{', '.join(STREAMING_STYLES)} with a bounded left context")
    sizes = chunk_sizes(model)
    if chunk_ms is not None:
        if chunk_ms not in sizes:
            raise UserError(f"--chunk-ms {chunk_ms}: this model streams chunks of "
                              f"{', '.join(f'{ms} ms' for ms in sorted(sizes))}; expected one of those")
        encoder.set_default_att_context_size(sizes[chunk_ms])
    encoder.setup_streaming_params()
    cfg = encoder.streaming_cfg
    look_back, shift = _later(cfg.pre_encode_cache_size), _later(cfg.shift_size)
    first = _first(cfg.chunk_size)
    dims = StreamingDims(
        n_mels=int(model.cfg.preprocessor.features), encoder_dim=int(encoder.d_model), layers=len(encoder.layers),
        first_chunk_mel_frames=first, first_chunk_encoder_frames=0, chunk_mel_frames=look_back + shift,
        shift_mel_frames=shift, pre_encode_cache_frames=look_back,
        drop_extra_pre_encoded=int(cfg.drop_extra_pre_encoded), valid_out_frames=int(cfg.valid_out_len),
        chunk_encoder_frames=0, cache_channel_frames=int(cfg.last_channel_cache_size),
        cache_time_frames=int(encoder.conv_context_size[0]),
        att_context_size=tuple(int(c) for c in encoder.att_context_size),
        mel_hop_seconds=float(model.cfg.preprocessor.window_stride))
    caches = [torch.from_numpy(a) for a in _zero_caches(dims)]
    frames = {}
    with torch.no_grad():
        for step, mel_frames in ((EncoderStreamingFirst, first), (EncoderStreaming, dims.chunk_mel_frames)):
            encoded, *_ = step(model).eval()(torch.zeros(1, dims.n_mels, mel_frames),
                                             torch.tensor([mel_frames], dtype=torch.int32), *caches)
            frames[step] = int(encoded.shape[-1])
    return replace(dims, first_chunk_encoder_frames=frames[EncoderStreamingFirst],
                   chunk_encoder_frames=frames[EncoderStreaming])


def as_exported(model, description: dict):
    """``model`` set up for the chunk its packages were exported for (``description``: their
    metadata.json): a cache-aware model's offline components, too, run with that chunk's attention
    context. A model without streaming packages is returned as it is."""
    recorded = description.get("streaming")
    if recorded is not None:
        streaming_dims(model, recorded["chunk_ms"])
    return model


def _first(size) -> int:
    """NeMo gives [first chunk, later chunks] sizes (one number where they are the same)."""
    return int(size[0] if isinstance(size, (list, tuple)) else size)


def _later(size) -> int:
    return int(size[1] if isinstance(size, (list, tuple)) else size)


def _zero_caches(dims: StreamingDims) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (np.zeros((1, dims.layers, dims.cache_channel_frames, dims.encoder_dim), np.float32),
            np.zeros((1, dims.layers, dims.encoder_dim, dims.cache_time_frames), np.float32),
            np.zeros(1, np.int32))


@dataclass(frozen=True)
class MelChunk:
    """One chunk as NeMo's streaming buffer cuts it (the first: new mel frames; the others:
    look-back and new frames), ``length`` of them valid."""

    mel: np.ndarray  # [1, n_mels, frames]; the last chunk of a stream may be shorter
    length: int
    first: bool
    last: bool

    @property
    def component(self) -> str:
        """The package that encodes this chunk."""
        return "encoder_streaming_first" if self.first else "encoder_streaming"

    def padded(self, dims: StreamingDims) -> np.ndarray:
        """The package's fixed-shape input: the frames, then zeros (the mel a stream's end pads with)."""
        frames = dims.first_chunk_mel_frames if self.first else dims.chunk_mel_frames
        out = np.zeros((1, dims.n_mels, frames), np.float32)
        out[:, :, :self.mel.shape[-1]] = self.mel
        return out

    def short(self, dims: StreamingDims) -> bool:
        """A stream's last chunk with fewer frames than its package takes."""
        return self.length < (dims.first_chunk_mel_frames if self.first else dims.chunk_mel_frames)


def mel_chunks(model, samples: np.ndarray) -> list[MelChunk]:
    """The stream's chunks, cut by NeMo's ``CacheAwareStreamingAudioBuffer`` from the mel of the
    whole stream (NeMo's front end, without dither)."""
    # lazy: NeMo's ASR utilities take seconds to import, and only cutting a stream needs them
    from nemo.collections.asr.parts.utils.streaming_utils import CacheAwareStreamingAudioBuffer

    buffer = CacheAwareStreamingAudioBuffer(model, online_normalization=False, pad_and_drop_preencoded=False)
    buffer.append_audio(np.asarray(samples, np.float32))
    chunks = [(chunk.detach().numpy().astype(np.float32), int(length[0])) for chunk, length in buffer]
    return [MelChunk(mel, length, i == 0, i == len(chunks) - 1) for i, (mel, length) in enumerate(chunks)]


def committed_frames(length: int, dims: StreamingDims, last: bool) -> int:
    """Encoder frames of a chunk a decoder consumes: ``valid_out_frames``, and every frame on
    the last chunk (NeMo's ``streaming_post_process``)."""
    return length if last else min(length, dims.valid_out_frames)


class NemoStream:
    """NeMo's ``cache_aware_stream_step``, chunk after chunk, its caches carried (layers first)."""

    def __init__(self, model, dims: StreamingDims):
        self.encoder = model.encoder
        self.dims = dims
        channel, time, channel_len = self.encoder.get_initial_cache_state(batch_size=1)
        self.caches = (channel, time, channel_len)

    def step(self, chunk: MelChunk) -> dict[str, np.ndarray]:
        """The chunk's committed encoder frames and the next caches, laid out as the package's outputs."""
        with torch.no_grad():
            encoded, length, *caches = self.encoder.cache_aware_stream_step(
                processed_signal=torch.from_numpy(chunk.mel), processed_signal_length=torch.tensor([chunk.length]),
                cache_last_channel=self.caches[0], cache_last_time=self.caches[1],
                cache_last_channel_len=self.caches[2], keep_all_outputs=chunk.last,
                drop_extra_pre_encoded=0 if chunk.first else self.dims.drop_extra_pre_encoded)
        self.caches = tuple(caches)
        frames = int(length[0])
        return {"encoder": encoded[:, :, :frames].numpy(), "encoder_length": np.array([frames], np.int32),
                "cache_last_channel_next": caches[0].transpose(0, 1).numpy(),
                "cache_last_time_next": caches[1].transpose(0, 1).numpy(),
                "cache_last_channel_len_next": caches[2].numpy().astype(np.int32)}

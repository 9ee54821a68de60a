"""Torch modules that expose each Parakeet-TDT component with the exported I/O contract.

Each wrapper calls NeMo's own modules, so the wrapper *is* the Torch reference the parity
suite compares against. Lengths cross the boundary as int32 (Core ML's integer type) and
become int64 inside, as NeMo expects.
"""

from __future__ import annotations

import torch
from torch import nn

from exporters.components import COMPONENTS, MAX_AUDIO_SECONDS, STREAMING_COMPONENTS, ModelDims
from infra.errors import UserError


class Preprocessor(nn.Module):
    """Waveform -> normalised log-mel, honouring the true ``audio_length`` (per-feature stats)."""

    def __init__(self, model):
        super().__init__()
        self.preprocessor = model.preprocessor

    def forward(self, audio_signal, audio_length):
        mel, mel_length = self.preprocessor(input_signal=audio_signal, length=audio_length.long())
        return mel, mel_length.int()


class Encoder(nn.Module):
    """Log-mel [B, n_mels, frames] -> FastConformer output [B, d_model, T]."""

    def __init__(self, model):
        super().__init__()
        self.encoder = model.encoder

    def forward(self, mel, mel_length):
        encoded, encoded_length = self.encoder(audio_signal=mel, length=mel_length.long())
        return encoded, encoded_length.int()


class MelEncoder(nn.Module):
    """Preprocessor and encoder fused into one program."""

    def __init__(self, model):
        super().__init__()
        self.preprocessor = Preprocessor(model)
        self.encoder = Encoder(model)

    def forward(self, audio_signal, audio_length):
        mel, mel_length = self.preprocessor(audio_signal, audio_length)
        return self.encoder(mel, mel_length)


class Decoder(nn.Module):
    """One prediction-network step with the LSTM state passed in and out explicitly.

    No start-of-sequence is prepended (NeMo's export mode does the same): the host feeds the
    blank id for the first step, which ``blank_as_pad`` embeds to zeros.
    """

    def __init__(self, model):
        super().__init__()
        self.decoder = model.decoder

    def forward(self, targets, target_length, h_in, c_in):
        del target_length  # part of the released contract; one step needs no length
        output, (h_out, c_out) = self.decoder.predict(targets.long(), state=[h_in, c_in], add_sos=False)
        return output.transpose(1, 2), h_out, c_out


def raw_joint_logits(joint, encoder, decoder):
    """NeMo's joint (project, add, joint_net) without the CPU-only log_softmax over the whole row.

    ``RNNTJoint`` with ``log_softmax: null`` normalises tokens and durations together on CPU,
    which corrupts the duration logits; the exported joint returns the raw logits instead.
    """
    f = joint.project_encoder(encoder.transpose(1, 2))  # [B, T, H]
    g = joint.project_prednet(decoder.transpose(1, 2))  # [B, U, H]
    return joint.joint_net(f.unsqueeze(2) + g.unsqueeze(1))  # [B, T, U, V+1+durations]


class Joint(nn.Module):
    """Encoder [B, d_model, T] and decoder [B, pred_hidden, U] -> logits [B, T, U, V+1+D]."""

    def __init__(self, model):
        super().__init__()
        self.joint = model.joint

    def forward(self, encoder, decoder):
        return raw_joint_logits(self.joint, encoder, decoder)


def token_duration_decision(logits, num_token_classes: int):
    """Greedy TDT decision on the host's terms: token argmax (blank included) with its softmax
    probability over the token logits, and the duration index argmax over the rest."""
    token_logits = logits[..., :num_token_classes]
    duration_logits = logits[..., num_token_classes:]
    token_prob, token_id = torch.softmax(token_logits, dim=-1).max(dim=-1)
    duration = duration_logits.argmax(dim=-1)
    return token_id.int(), token_prob, duration.int()


class JointDecision(Joint):
    """Joint followed by the greedy decision, so the host reads three small tensors."""

    def forward(self, encoder, decoder):
        logits = super().forward(encoder, decoder)
        # NeMo's num_classes_with_blank counts the duration outputs too.
        num_token_classes = self.joint.num_classes_with_blank - self.joint.num_extra_outputs
        return token_duration_decision(logits, num_token_classes)


class JointDecisionSingleStep(JointDecision):
    """The decision for one encoder frame and one decoder step: [B, d, 1] inputs, [B, 1, 1] outputs."""

    def forward(self, encoder_step, decoder_step):
        return super().forward(encoder_step, decoder_step)


def ctc_decoder(model):
    """The model's CTC decoder (NeMo's ``ConvASRDecoder``): a hybrid's auxiliary ``ctc_decoder``, a
    CTC model's ``decoder``; None for a model without one."""
    found = getattr(model, "ctc_decoder", None)
    if found is None and not hasattr(model, "joint"):
        found = getattr(model, "decoder", None)
    return found


class CtcHead(nn.Module):
    """Encoder [B, d_model, T] -> raw CTC logits [B, T, V+1]: NeMo's ``ConvASRDecoder`` without its
    closing log_softmax (and temperature, which scales but never reorders a frame's logits)."""

    def __init__(self, model):
        super().__init__()
        self.decoder_layers = ctc_decoder(model).decoder_layers

    def forward(self, encoder_output):
        return self.decoder_layers(encoder_output).transpose(1, 2)


class EncoderStreaming(nn.Module):
    """A later chunk (look-back, then new mel frames) through NeMo's ``cache_aware_stream_step``
    with the caches as inputs and outputs, batch first ([1, layers, ...], as the public streaming
    releases lay them out; NeMo's are layers first). Every encoder frame the chunk yields is
    returned (look-ahead included): the host keeps ``StreamingDims.valid_out_frames`` of them but
    on the last chunk, as NeMo's pipeline does. The model's streaming configuration must be set
    (``exporters.streaming.streaming_dims``)."""

    def __init__(self, model):
        super().__init__()
        self.encoder = model.encoder
        self.drop_extra_pre_encoded = model.encoder.streaming_cfg.drop_extra_pre_encoded

    def forward(self, mel, mel_length, cache_last_channel, cache_last_time, cache_last_channel_len):
        encoded, length, channel, time, channel_len = self.encoder.cache_aware_stream_step(
            processed_signal=mel, processed_signal_length=mel_length.long(),
            cache_last_channel=cache_last_channel.transpose(0, 1), cache_last_time=cache_last_time.transpose(0, 1),
            cache_last_channel_len=cache_last_channel_len.long(), keep_all_outputs=True,
            drop_extra_pre_encoded=self.drop_extra_pre_encoded)
        return encoded, length.int(), channel.transpose(0, 1), time.transpose(0, 1), channel_len.int()


class EncoderStreamingFirst(EncoderStreaming):
    """A stream's first chunk: new mel frames only, so nothing of it is dropped after subsampling."""

    def __init__(self, model):
        super().__init__(model)
        self.drop_extra_pre_encoded = 0


class EncoderStreamingState(nn.Module):
    """A later chunk through ``cache_aware_stream_step`` with the caches as buffers that Core ML
    converts to states (``ct.StateType``, by buffer name): read at the start of a prediction and
    overwritten with the next caches at its end. They are fp16, as the package's states are, and
    widened to fp32 for the computation."""

    def __init__(self, model):
        super().__init__()
        self.step = EncoderStreaming(model)
        encoder = model.encoder
        layers, width = len(encoder.layers), encoder.d_model
        channel = int(encoder.streaming_cfg.last_channel_cache_size)
        self.register_buffer("cache_last_channel", torch.zeros(1, layers, channel, width, dtype=torch.float16))
        self.register_buffer("cache_last_time", torch.zeros(1, layers, width, int(encoder.conv_context_size[0]),
                                                            dtype=torch.float16))
        self.register_buffer("cache_last_channel_len", torch.zeros(1, dtype=torch.float16))

    def forward(self, mel, mel_length):
        encoded, length, channel, time, channel_len = self.step(
            mel, mel_length, self.cache_last_channel.float(), self.cache_last_time.float(),
            self.cache_last_channel_len.int())
        # whole-slice assignments: the in-place writes coremltools turns into state updates
        self.cache_last_channel[:, :, :, :] = channel.half()
        self.cache_last_time[:, :, :, :] = time.half()
        self.cache_last_channel_len[:] = channel_len.half()
        return encoded, length


# The Torch reference of each component of the contract (``exporters.components``).
WRAPPERS: dict[str, type[nn.Module]] = {
    "preprocessor": Preprocessor,
    "encoder": Encoder,
    "mel_encoder": MelEncoder,
    "decoder": Decoder,
    "joint": Joint,
    "joint_decision": JointDecision,
    "joint_decision_single_step": JointDecisionSingleStep,
    "ctc_head": CtcHead,
    "encoder_streaming_first": EncoderStreamingFirst,
    "encoder_streaming": EncoderStreaming,
    "encoder_streaming_state": EncoderStreamingState,
}
if set(WRAPPERS) != set(COMPONENTS) | set(STREAMING_COMPONENTS):
    raise ImportError(f"wrappers {sorted(WRAPPERS)} do not match the contract's components "
                      f"{sorted(COMPONENTS) + sorted(STREAMING_COMPONENTS)}")


def wrapper(name: str, model) -> nn.Module:
    """Component ``name``'s Torch wrapper on ``model``, in eval mode."""
    return WRAPPERS[name](model).eval()


def model_dims(model, max_audio_seconds: float = MAX_AUDIO_SECONDS) -> ModelDims:
    """Measure the window's sizes by running the model's own front end on silence."""
    sample_rate = int(model.cfg.sample_rate)
    samples = int(round(sample_rate * max_audio_seconds))
    with torch.no_grad():
        mel, mel_length = model.preprocessor(input_signal=torch.zeros(1, samples), length=torch.tensor([samples]))
        subsampled, _ = model.encoder.pre_encode(x=mel.transpose(1, 2), lengths=mel_length)
    ctc = ctc_decoder(model)
    transducer = hasattr(model, "joint")
    durations = tuple(int(d) for d in (model.cfg.decoding.get("durations") or ())) if transducer else ()
    if transducer and len(durations) != model.joint.num_extra_outputs:
        raise UserError(
            f"the joint has {model.joint.num_extra_outputs} extra outputs but the decoding config lists "
            f"durations {list(durations)}; expected one duration per extra output"
        )
    tokenizer = getattr(model, "tokenizer", None)
    vocab_size = (model.decoder.vocab_size if transducer else tokenizer.vocab_size if tokenizer is not None
                  else ctc.num_classes_with_blank - 1)
    if ctc is not None and ctc.num_classes_with_blank != vocab_size + 1:
        raise UserError(f"the CTC head has {ctc.num_classes_with_blank} classes; expected the vocabulary's "
                        f"{vocab_size} pieces and the blank, {vocab_size + 1}")
    return ModelDims(
        sample_rate=sample_rate,
        max_audio_seconds=max_audio_seconds,
        max_audio_samples=samples,
        n_mels=mel.shape[1],
        mel_frames=mel.shape[2],
        mel_length=int(mel_length[0]),
        encoder_dim=model.encoder.d_model,
        encoder_frames=subsampled.shape[1],
        encoder_hop=int(round(model.cfg.preprocessor.window_stride * sample_rate)) * model.encoder.subsampling_factor,
        pred_hidden=model.decoder.pred_hidden if transducer else 0,
        pred_layers=model.decoder.pred_rnn_layers if transducer else 0,
        vocab_size=vocab_size,
        durations=durations,
        transducer=transducer,
        ctc_classes=0 if ctc is None else ctc.num_classes_with_blank,
    )

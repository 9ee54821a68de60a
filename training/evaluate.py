"""How well the small model transcribes: NeMo's greedy TDT (and greedy CTC, with a CTC head) on the
held-out set, its WER, and how confident it is; and the model card that records it.

``python -m training.evaluate --nemo FILE.nemo --manifest training-work/test.json`` prints them
for any checkpoint.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import soundfile

from exporters.sources import ModelSource
from exporters.wrappers import model_dims
from infra.cache import ExportCache
from validation.audio import fit_window
from validation.evaluation import NEMO_PATHS, decoders_for, token_text
from validation.evaluation import evaluate as evaluate_set
from validation.evaluation import read_manifest as read_set
from validation.held_out import long_form_manifest, median_token_probability
from validation.metrics import word_error_rate


def read_manifest(manifest: Path) -> list[dict]:
    return [json.loads(line) for line in Path(manifest).read_text(encoding="utf-8").splitlines() if line.strip()]


def nemo_transcripts(model, paths: list[str], batch_size: int = 16, decoding: str = "tdt") -> list[str]:
    """NeMo's own ``transcribe``: greedy TDT from the model's decoding config, or a hybrid's CTC
    decoding with ``decoding`` "ctc"."""
    if decoding == "ctc":
        model.change_decoding_strategy(decoder_type="ctc", verbose=False)
    try:
        hypotheses = model.transcribe(paths, batch_size=batch_size, verbose=False)
    finally:
        if decoding == "ctc":
            model.change_decoding_strategy(decoder_type="rnnt", verbose=False)
    if isinstance(hypotheses, tuple):  # (best, all beams) from some NeMo versions
        hypotheses = hypotheses[0]
    return [h.text if hasattr(h, "text") else str(h) for h in hypotheses]


def evaluate(model, manifest: Path, decoding: str = "tdt") -> dict:
    """Test WER of NeMo's greedy TDT (or a hybrid's greedy CTC), and the median top-1 probability
    of the emitted tokens."""
    rows = read_manifest(manifest)
    references = [r["text"] for r in rows]
    hypotheses = nemo_transcripts(model, [r["audio_filepath"] for r in rows], decoding=decoding)
    dims = model_dims(model)
    clips = [fit_window(soundfile.read(r["audio_filepath"], dtype="float32")[0], dims, f"test_{i}", r["text"])
             for i, r in enumerate(rows)]
    return {
        "wer": word_error_rate(references, hypotheses),
        "median_token_prob": median_token_probability(model, dims, clips, decoding),
        "utterances": len(rows),
        "words": sum(len(t.split()) for t in references),
        "examples": [{"reference": r, "hypothesis": h} for r, h in list(zip(references, hypotheses, strict=True))[:5]],
    }


def evaluate_long_form(model, cache_dir: Path, decoding: str = "tdt") -> dict:
    """WER on ``builtin:long-form`` (held-out sentences joined into 30 to 120 s recordings) of NeMo
    on whole recordings and of NeMo on the export's overlapping 15 s windows, merged; greedy TDT,
    or a hybrid's greedy CTC with ``decoding`` "ctc"."""
    dims = model_dims(model)
    utterances, _ = read_set(long_form_manifest(ExportCache(cache_dir), dims))
    result = evaluate_set(utterances, decoders_for(model, dims, {}, load=None, decoding=decoding), token_text(model),
                          dims, normalizer="none")
    return {**{path: result.wer(path) for path in NEMO_PATHS}, "recordings": len(result.records),
            "audio_s": round(sum(r["seconds"] for r in result.records), 1)}


def card_record(nemo: Path) -> dict | None:
    """The record the model card beside ``nemo`` ends with (None without a card)."""
    card = nemo.with_suffix(".md")
    if not card.is_file():
        return None
    text = card.read_text(encoding="utf-8")
    return json.loads(text[text.rindex("```json") + len("```json"):text.rindex("```")])


def write_model_card(nemo: Path, architecture, record: dict) -> Path:
    """``<name>.md`` beside the checkpoint: what it is, the data, the training, the test numbers."""
    test = record["test"]
    hours = record["audio_hours"]
    card = nemo.with_suffix(".md")
    examples = "\n".join(f"| {e['reference']} | {e['hypothesis']} |" for e in test["examples"])
    stages = "\n".join(
        f"| {i} | {s['data']} | {s.get('steps', '-')} | {s.get('batch_size', '-')} | {s.get('lr', '-')} | "
        + (f"{s['training_s']} s |" if "training_s" in s else f"from `{s['from']}` |")
        for i, s in enumerate(record["stages"], 1))
    joined_hours = record.get("joined_audio_hours", {}).get("train", 0)
    long_form = record.get("long_form")
    ctc = record.get("test_ctc")
    ctc_text = "" if ctc is None else (
        f"\nNeMo greedy CTC on the CTC head: **WER {100 * ctc['wer']:.2f}%** over the same utterances. Median "
        f"top-1 probability of the emitted tokens: **{ctc['median_token_prob']:.4f}**.\n")
    head = "" if ctc is None else "; a CTC head (NeMo's ConvASRDecoder) beside the TDT decoder, over the same pieces"
    stage_3 = "" if ctc is None else (
        " Stage 3 puts the CTC head beside the TDT decoder and trains the whole model on the same joined "
        "recordings as NeMo's hybrid TDT-CTC model (`EncDecHybridRNNTCTCBPEModel`, its training step): the loss is "
        "0.7 x TDT + 0.3 x CTC, the weight of NVIDIA's hybrid recipes; NeMo's CTC loss runs on the CPU as it is.")
    long_form_text = "" if long_form is None else (
        f"\n## Results on `builtin:long-form`\n{long_form['recordings']} recordings of 30 to 120 s "
        f"({long_form['audio_s']:g} s): the held-out sentences joined with 0.3-0.8 s pauses.\n\n"
        f"| path | WER |\n|---|---|\n"
        f"| NeMo on the export's 15 s windows, merged (`nemo_windowed`) | "
        f"**{100 * long_form['nemo_windowed']:.2f}%** |\n"
        f"| NeMo on whole recordings (`nemo_full`) | {100 * long_form['nemo_full']:.2f}% |\n"
        + ("" if "long_form_ctc" not in record else
           f"| the CTC head, greedy CTC, on the windows | **{100 * record['long_form_ctc']['nemo_windowed']:.2f}%** |\n"
           f"| the CTC head, greedy CTC, on whole recordings | {100 * record['long_form_ctc']['nemo_full']:.2f}% |\n"))
    card.write_text(f"""# {architecture.name}

A small Parakeet-TDT model trained here so that decisions and transcripts can be tested on a
model that has learned something. Not a speech recognizer for real use: it knows the few
hundred words of a generated corpus spoken by espeak-ng.

## Architecture
Parakeet-TDT v3's topology (NeMo `{record.get('model_class', 'EncDecRNNTBPEModel')}`): 128 mel features, FastConformer
encoder with 8x depthwise-striding subsampling ({architecture.subsampling_conv_channels} channels),
{architecture.n_layers} layers, d_model {architecture.d_model}, {architecture.n_heads} heads, relative positions, \
conv kernel {architecture.conv_kernel_size}; {architecture.pred_rnn_layers}-layer LSTM prediction network of \
{architecture.pred_hidden};
joint of {architecture.joint_hidden}; a SentencePiece BPE tokenizer of {architecture.vocab_size} pieces trained on the
training text; TDT durations [0, 1, 2, 3, 4]{head}. {record['parameters']:,} parameters.

## Data
Sentences generated from grammar patterns over a fixed English vocabulary (`validation/corpus.py`),
seed {record['seed']}: {record['sentences']['train']} training sentences ({hours['train']} h),
{record['sentences']['dev']} dev and {record['sentences']['test']} test sentences ({hours['test']} h) that never
occur in training. Each utterance is spoken by espeak-ng with a random English voice and
variant, 130-190 words per minute, pitch 25-75, with white noise at 15-40 dB SNR.

## Training
`python -m training.train_tiny` (seed {record['seed']}): NeMo's own training step under Lightning,
with the TDT loss of `training/tdt_loss.py` (sigma {record['sigma']}, no omega sampling) so that it runs on
a CPU; AdamW with a cosine schedule in each stage. On `{record['device']}` with {record['threads']} threads:

| stage | data | steps | batch | peak lr | training |
|---|---|---|---|---|---|
{stages}

Stage 2 joins the training sentences (each in {record.get('joined_copies')} recordings, with other neighbours)
into recordings of 2 to 15 s: pauses of 0.2-1 s between sentences, one in five of 1-3 s, now and then up to 2 s
of silence before the first, each sentence at a gain of 0 to -12 dB, the pauses
filled with the room noise of the sentence after them ({joined_hours} h of training audio).{stage_3} Synthesis
and joining {record['synthesis_s']} s; {record['total_s']} s in all.
{"".join(f"{chr(10)}{line}{chr(10)}" for line in record.get("notes", []))}
## Results on the held-out test set
NeMo greedy TDT: **WER {100 * test['wer']:.2f}%** over {test['utterances']} utterances
({test['words']} words). Median top-1 probability of the emitted tokens: **{test['median_token_prob']:.4f}**.

| reference | NeMo greedy TDT |
|---|---|
{examples}
{ctc_text}{long_form_text}
```json
{json.dumps(record, indent=2)}
```
""", encoding="utf-8")
    return card


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("--nemo", type=Path, required=True)
    parser.add_argument("--manifest", type=Path, required=True, help="a NeMo manifest, e.g. training-work/test.json")
    args = parser.parse_args(argv)

    model = ModelSource("nemo", str(args.nemo)).load()
    result = evaluate(model, args.manifest)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

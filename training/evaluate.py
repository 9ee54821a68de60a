"""How well the small model transcribes: NeMo's greedy TDT on the held-out set, its WER, and
how confident its joint is; and the model card that records it.

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
from validation.audio import fit_window
from validation.held_out import median_token_probability
from validation.metrics import word_error_rate


def read_manifest(manifest: Path) -> list[dict]:
    return [json.loads(line) for line in Path(manifest).read_text(encoding="utf-8").splitlines() if line.strip()]


def nemo_transcripts(model, paths: list[str], batch_size: int = 16) -> list[str]:
    """NeMo's own ``transcribe`` (greedy TDT from the model's decoding config)."""
    hypotheses = model.transcribe(paths, batch_size=batch_size, verbose=False)
    if isinstance(hypotheses, tuple):  # (best, all beams) from some NeMo versions
        hypotheses = hypotheses[0]
    return [h.text if hasattr(h, "text") else str(h) for h in hypotheses]


def evaluate(model, manifest: Path) -> dict:
    """Test WER of NeMo's greedy TDT, and the median top-1 probability of the emitted tokens."""
    rows = read_manifest(manifest)
    references = [r["text"] for r in rows]
    hypotheses = nemo_transcripts(model, [r["audio_filepath"] for r in rows])
    dims = model_dims(model)
    clips = [fit_window(soundfile.read(r["audio_filepath"], dtype="float32")[0], dims, f"test_{i}", r["text"])
             for i, r in enumerate(rows)]
    return {
        "wer": word_error_rate(references, hypotheses),
        "median_token_prob": median_token_probability(model, dims, clips),
        "utterances": len(rows),
        "words": sum(len(t.split()) for t in references),
        "examples": [{"reference": r, "hypothesis": h} for r, h in list(zip(references, hypotheses))[:5]],
    }


def write_model_card(nemo: Path, architecture, record: dict) -> Path:
    """``<name>.md`` beside the checkpoint: what it is, the data, the training, the test numbers."""
    test = record["test"]
    hours = record["audio_hours"]
    card = nemo.with_suffix(".md")
    examples = "\n".join(f"| {e['reference']} | {e['hypothesis']} |" for e in test["examples"])
    card.write_text(f"""# {architecture.name}

A small Parakeet-TDT model trained here so that decisions and transcripts can be tested on a
model that has learned something. Not a speech recognizer for real use: it knows the few
hundred words of a generated corpus spoken by espeak-ng.

## Architecture
Parakeet-TDT v3's topology (NeMo `EncDecRNNTBPEModel`): 128 mel features, FastConformer
encoder with 8x depthwise-striding subsampling ({architecture.subsampling_conv_channels} channels),
{architecture.n_layers} layers, d_model {architecture.d_model}, {architecture.n_heads} heads, relative positions, \
conv kernel {architecture.conv_kernel_size}; {architecture.pred_rnn_layers}-layer LSTM prediction network of \
{architecture.pred_hidden};
joint of {architecture.joint_hidden}; a SentencePiece BPE tokenizer of {architecture.vocab_size} pieces trained on the
training text; TDT durations [0, 1, 2, 3, 4]. {record['parameters']:,} parameters.

## Data
Sentences generated from grammar patterns over a fixed English vocabulary (`validation/corpus.py`),
seed {record['seed']}: {record['sentences']['train']} training sentences ({hours['train']} h),
{record['sentences']['dev']} dev and {record['sentences']['test']} test sentences ({hours['test']} h) that never
occur in training. Each utterance is spoken by espeak-ng with a random English voice and
variant, 130-190 words per minute, pitch 25-75, with white noise at 15-40 dB SNR.

## Training
`python -m training.train_tiny` (seed {record['seed']}): NeMo's own training step under Lightning,
with the TDT loss of `training/tdt_loss.py` (sigma {record['sigma']}, no omega sampling) so that it runs on
a CPU. {record['max_steps']} steps of {record['batch_size']} utterances, AdamW, cosine schedule.
On `{record['device']}` with {record['threads']} threads: synthesis {record['synthesis_s']} s,
training {record['training_s']} s, {record['total_s']} s in all.
{"".join(f"{chr(10)}{line}{chr(10)}" for line in record.get("notes", []))}
## Results on the held-out test set
NeMo greedy TDT: **WER {100 * test['wer']:.2f}%** over {test['utterances']} utterances
({test['words']} words). Median top-1 probability of the emitted tokens: **{test['median_token_prob']:.4f}**.

| reference | NeMo greedy TDT |
|---|---|
{examples}

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

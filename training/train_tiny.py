"""Train the small Parakeet-TDT test model from a seed: ``python -m training.train_tiny``.

Synthesises the corpus with espeak-ng, trains a SentencePiece BPE tokenizer on the training
text, builds NeMo's ``EncDecRNNTBPEModel`` with Parakeet-TDT v3's topology at small widths,
trains it with NeMo's own training step under Lightning (the TDT loss swapped for the
vectorised one in :mod:`training.tdt_loss`, so it runs on a CPU), saves the ``.nemo`` and
writes the model card with the held-out test WER. Runs on a GPU when one is present.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from nemo.collections.asr.models import EncDecRNNTBPEModel
from omegaconf import OmegaConf, open_dict

from exporters.presets import TDT_DURATIONS, TRAINED_PRESETS, Preset, model_config, write_tokenizer
from exporters.sources import quiet_nemo
from training.evaluate import evaluate, write_model_card
from training.tdt_loss import TDTLoss
from validation.corpus import SEED, SPLITS, split_utterances, write_manifest

ROOT = Path(__file__).resolve().parent.parent

# Parakeet-TDT v3's topology at widths a 2-core CPU trains in well under an hour.
ARCHITECTURE = Preset(
    name="parakeet-tdt-tiny-trained",
    summary="Parakeet-TDT v3's topology at small widths, trained on espeak-ng English",
    d_model=128,
    n_layers=4,
    n_heads=4,
    subsampling_conv_channels=32,
    pred_hidden=128,
    pred_rnn_layers=2,
    joint_hidden=128,
    vocab_size=128,
)
SIGMA = 0.02  # Parakeet-TDT v3's logit undernormalisation


def log(message: str) -> None:
    print(f"[train {time.strftime('%H:%M:%S')}] {message}", flush=True)


def training_config(tokenizer_dir: Path, manifests: dict[str, Path], batch_size: int, max_steps: int) -> dict:
    cfg = model_config(ARCHITECTURE, str(tokenizer_dir))
    dataset = {"sample_rate": 16000, "batch_size": batch_size, "num_workers": 0, "pin_memory": False,
               "trim_silence": False, "max_duration": 16.7, "use_start_end_token": False}
    cfg["train_ds"] = {**dataset, "manifest_filepath": str(manifests["train"]), "shuffle": True}
    cfg["validation_ds"] = {**dataset, "manifest_filepath": str(manifests["dev"]), "shuffle": False}
    # The joint's dropout acts on a [B, T, U+1, H] tensor: a third of a CPU step for little gain here.
    cfg["joint"]["jointnet"]["dropout"] = 0.0
    cfg["spec_augment"] = {"_target_": "nemo.collections.asr.modules.SpectrogramAugmentation",
                           "freq_masks": 2, "freq_width": 15, "time_masks": 2, "time_width": 0.05}
    cfg["optim"] = {"name": "adamw", "lr": 2e-3, "betas": [0.9, 0.98], "weight_decay": 1e-3,
                    "sched": {"name": "CosineAnnealing", "warmup_steps": min(500, max_steps // 10),
                              "min_lr": 1e-5, "max_steps": max_steps}}
    return cfg


def progress_callback(every: int):
    class Progress(Callback):
        """One line every ``every`` steps and after each validation: a log a CI job can show."""

        def __init__(self):
            self.start = time.monotonic()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            step = trainer.global_step
            if step % every == 0:
                loss = outputs["loss"].item() if isinstance(outputs, dict) else float("nan")
                lr = trainer.optimizers[0].param_groups[0]["lr"]
                log(f"step {step}/{trainer.max_steps}  loss {loss:.3f}  lr {lr:.2e}  "
                    f"{time.monotonic() - self.start:.0f} s")

        def on_validation_end(self, trainer, module):
            wer = trainer.callback_metrics.get("val_wer")
            if wer is not None:
                log(f"step {trainer.global_step}: dev WER {100 * float(wer):.1f}%")

    return Progress()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.train_tiny", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=TRAINED_PRESETS[ARCHITECTURE.name],
                        help="the .nemo to write (default: the shipped preset's file)")
    parser.add_argument("--work-dir", type=Path, default=Path("training-work"),
                        help="audio, manifests and tokenizer go here (default: ./training-work)")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--train-sentences", type=int, default=SPLITS["train"])
    parser.add_argument("--dev-sentences", type=int, default=SPLITS["dev"])
    parser.add_argument("--test-sentences", type=int, default=SPLITS["test"])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-steps", type=int, default=3000)
    args = parser.parse_args(argv)
    if args.out.suffix != ".nemo":
        parser.error(f"--out {args.out}: expected a path ending in .nemo")

    began = time.monotonic()
    torch.set_num_threads(os.cpu_count() or 1)
    pl.seed_everything(args.seed, workers=True, verbose=False)
    quiet_nemo()
    work = args.work_dir
    work.mkdir(parents=True, exist_ok=True)

    splits = split_utterances(args.seed, {"train": args.train_sentences, "dev": args.dev_sentences,
                                          "test": args.test_sentences})
    manifests = {}
    for split, items in splits.items():
        manifest = work / f"{split}.json"
        if not manifest.exists():
            log(f"synthesising {len(items)} {split} utterances with espeak-ng")
            every = max(1, len(items) // 10)
            write_manifest(items, work / split, manifest, 16000,
                           progress=lambda done, total, every=every, split=split:
                           done % every == 0 and log(f"  {split}: {done}/{total}"))
        manifests[split] = manifest
    synth_s = time.monotonic() - began

    tokenizer_dir = work / "tokenizer"
    write_tokenizer([u.text for u in splits["train"]], ARCHITECTURE.vocab_size, tokenizer_dir)
    cfg = OmegaConf.create(training_config(tokenizer_dir, manifests, args.batch_size, args.max_steps))
    steps_per_epoch = -(-args.train_sentences // args.batch_size)
    trainer = pl.Trainer(
        max_steps=args.max_steps, accelerator="auto", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, gradient_clip_val=1.0,
        check_val_every_n_epoch=max(1, args.max_steps // steps_per_epoch // 8), log_every_n_steps=100,
        callbacks=[progress_callback(every=100)],
    )
    torch.manual_seed(args.seed)
    model = EncDecRNNTBPEModel(cfg=cfg, trainer=trainer)
    model.loss._loss = TDTLoss(blank=model.decoder.blank_idx, durations=TDT_DURATIONS, sigma=SIGMA)
    parameters = sum(p.numel() for p in model.parameters())
    log(f"{parameters:,} parameters; {args.max_steps} steps of {args.batch_size} "
        f"on {trainer.accelerator.__class__.__name__.replace('Accelerator', '')}")
    train_began = time.monotonic()
    trainer.fit(model)
    train_s = time.monotonic() - train_began

    # No paths of this machine in the checkpoint (NeMo's transcribe still reads validation_ds).
    with open_dict(model.cfg):
        for key in ("train_ds", "validation_ds"):
            model.cfg[key].manifest_filepath = None
    args.out.parent.mkdir(parents=True, exist_ok=True)
    partial = args.out.with_suffix(".partial.nemo")
    model.save_to(str(partial))
    partial.replace(args.out)
    log(f"saved {args.out} ({args.out.stat().st_size / 1e6:.1f} MB)")

    result = evaluate(model.eval(), manifests["test"])
    log(f"test WER {100 * result['wer']:.2f}% on {result['utterances']} utterances, "
        f"median top-1 probability {result['median_token_prob']:.4f}")
    record = {
        "seed": args.seed, "sigma": SIGMA, "parameters": parameters, "max_steps": args.max_steps,
        "batch_size": args.batch_size,
        "sentences": {k: len(v) for k, v in splits.items()},
        "audio_hours": {k: round(sum(json.loads(r)["duration"] for r in manifests[k].open()) / 3600, 2)
                        for k in manifests},
        "synthesis_s": round(synth_s), "training_s": round(train_s),
        "total_s": round(time.monotonic() - began), "device": str(trainer.strategy.root_device),
        "threads": torch.get_num_threads(), "test": result,
    }
    card = write_model_card(args.out, ARCHITECTURE, record)
    log(f"model card {card}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

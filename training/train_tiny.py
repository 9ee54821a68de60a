"""Train the small Parakeet-TDT test model from a seed: ``python -m training.train_tiny``.

Synthesises the corpus with espeak-ng, trains a SentencePiece BPE tokenizer on the training
text, builds NeMo's ``EncDecRNNTBPEModel`` with Parakeet-TDT v3's topology at small widths,
trains it with NeMo's own training step under Lightning (the TDT loss swapped for the
vectorised one in :mod:`training.tdt_loss`, so it runs on a CPU) in two stages: single sentences,
then recordings of 2 to 15 s joined from several sentences with pauses (so that a whole window
transcribes, not only the few seconds of one sentence). A third stage puts a CTC head beside the
TDT decoder and trains the whole model as NeMo's hybrid TDT-CTC model (its training step, the CTC
loss weighing 0.3 as in NVIDIA's hybrid recipes). Saves the ``.nemo`` and writes the model card
with the held-out and long-form WERs of both decodings. Runs on a GPU when one is present.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import soundfile
import torch
from lightning.pytorch.callbacks import Callback
from nemo.collections.asr.models import EncDecHybridRNNTCTCBPEModel, EncDecRNNTBPEModel
from omegaconf import OmegaConf, open_dict

from exporters.presets import (
    TDT_DURATIONS,
    TRAINED_PRESETS,
    Preset,
    aux_ctc_config,
    cache_aware_config,
    model_config,
    save_tokenizer,
    write_tokenizer,
)
from exporters.sources import quiet_nemo
from infra.compat import set_transducer_loss
from training.evaluate import card_record, evaluate, evaluate_long_form, write_model_card
from training.tdt_loss import TDTLoss
from validation.corpus import (
    JOINED_SECONDS,
    SEED,
    SPLITS,
    plan_joined,
    render_joined,
    split_utterances,
    write_manifest,
)

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
JOINED_STEPS = 600  # stage 2
JOINED_LR = 1e-3
JOINED_COPIES = 2  # each training sentence appears in this many joined recordings
STREAMING_NAME = "parakeet-tdt-tiny-streaming-trained"  # the cache-aware test model (--cache-aware)
CTC_STEPS = 800  # stage 3: the hybrid TDT-CTC model, on the joined recordings
CTC_LOSS_WEIGHT = 0.3  # the CTC loss's share of stage 3's loss (NVIDIA's hybrid recipes)


def log(message: str) -> None:
    print(f"[train {time.strftime('%H:%M:%S')}] {message}", flush=True)


def dataset_config(manifests: dict[str, Path], batch_size: int, shuffle: bool = True) -> dict:
    dataset = {"sample_rate": 16000, "batch_size": batch_size, "num_workers": 0, "pin_memory": False,
               "trim_silence": False, "max_duration": 16.7, "use_start_end_token": False}
    return {"train_ds": {**dataset, "manifest_filepath": str(manifests["train"]), "shuffle": shuffle},
            "validation_ds": {**dataset, "manifest_filepath": str(manifests["dev"]), "shuffle": False}}


def optim_config(max_steps: int, lr: float) -> dict:
    return {"name": "adamw", "lr": lr, "betas": [0.9, 0.98], "weight_decay": 1e-3,
            "sched": {"name": "CosineAnnealing", "warmup_steps": min(500, max_steps // 10),
                      "min_lr": 1e-5, "max_steps": max_steps}}


def training_config(tokenizer_dir: Path, manifests: dict[str, Path], batch_size: int, max_steps: int) -> dict:
    cfg = model_config(ARCHITECTURE, str(tokenizer_dir))
    cfg.update(dataset_config(manifests, batch_size))
    # The joint's dropout acts on a [B, T, U+1, H] tensor: a third of a CPU step for little gain here.
    cfg["joint"]["jointnet"]["dropout"] = 0.0
    cfg["spec_augment"] = {"_target_": "nemo.collections.asr.modules.SpectrogramAugmentation",
                           "freq_masks": 2, "freq_width": 15, "time_masks": 2, "time_width": 0.05}
    cfg["optim"] = optim_config(max_steps, lr=2e-3)
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


def trainer_for(max_steps: int, steps_per_epoch: int) -> pl.Trainer:
    return pl.Trainer(
        max_steps=max_steps, accelerator="auto", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, gradient_clip_val=1.0,
        check_val_every_n_epoch=max(1, max_steps // steps_per_epoch // 8), log_every_n_steps=100,
        callbacks=[progress_callback(every=max(1, min(100, max_steps // 20)))],
    )


def synthesise(splits: dict, work: Path) -> dict[str, Path]:
    """Each split's utterances rendered once into ``work`` (kept between runs), with its manifest."""
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
    return manifests


def join(manifest: Path, out_dir: Path, seed: int, copies: int) -> Path:
    """The split's recordings joined into 2 to 15 s recordings (``validation.corpus.plan_joined``)."""
    joined_manifest = out_dir.with_suffix(".json")
    if joined_manifest.exists():
        return joined_manifest
    rows = [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines()]
    audio = [soundfile.read(r["audio_filepath"], dtype="float32")[0] for r in rows]
    plans = plan_joined([a.size / 16000 for a in audio], seed, copies=copies)
    log(f"joining {len(rows)} {manifest.stem} utterances into {len(plans)} recordings of "
        f"{JOINED_SECONDS[0]:g}-{JOINED_SECONDS[1]:g} s")
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, plan in enumerate(plans):
        recording = render_joined(plan, audio, 16000, seed + i)
        path = out_dir / f"{i:05d}.wav"
        soundfile.write(str(path), recording, 16000, subtype="PCM_16")
        lines.append(json.dumps({"audio_filepath": str(path.resolve()), "duration": round(recording.size / 16000, 3),
                                 "text": " ".join(rows[p]["text"] for p in plan.parts)}) + "\n")
    partial = joined_manifest.with_suffix(".partial")
    partial.write_text("".join(lines), encoding="utf-8")
    partial.replace(joined_manifest)
    return joined_manifest


def bucketed(manifest: Path, batch_size: int, seed: int) -> Path:
    """The manifest reordered so that each batch holds recordings of about one length, the batches
    in a seeded random order: a batch is padded to its longest recording, and the joint and the loss
    grow with frames times tokens, so mixed 2 and 15 s batches cost several times as much."""
    rows = manifest.read_text(encoding="utf-8").splitlines()
    by_length = sorted(range(len(rows)), key=lambda i: json.loads(rows[i])["duration"])
    batches = [by_length[i:i + batch_size] for i in range(0, len(rows), batch_size)]
    full = len(rows) // batch_size  # a short batch stays last: the loader cuts batches off the file in order
    order = [*np.random.default_rng(seed).permutation(full), *range(full, len(batches))]
    out = manifest.with_name(f"{manifest.stem}_bucketed{batch_size}.json")
    out.write_text("".join(rows[i] + "\n" for b in order for i in batches[b]), encoding="utf-8")
    return out


def manifest_hours(manifest: Path) -> float:
    return round(sum(json.loads(r)["duration"] for r in manifest.open()) / 3600, 2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.train_tiny", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path,
                        help="the .nemo to write (default: the shipped preset's file)")
    parser.add_argument("--work-dir", type=Path, default=Path("training-work"),
                        help="audio, manifests and tokenizer go here (default: ./training-work)")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--train-sentences", type=int, default=SPLITS["train"])
    parser.add_argument("--dev-sentences", type=int, default=SPLITS["dev"])
    parser.add_argument("--test-sentences", type=int, default=SPLITS["test"])
    parser.add_argument("--batch-size", type=int, default=32, help="stage 1: sentences per step")
    parser.add_argument("--max-steps", type=int, default=3000, help="stage 1: steps on single sentences")
    parser.add_argument("--joined-batch-size", type=int, default=16, help="stage 2: recordings per step")
    parser.add_argument("--joined-steps", type=int, default=JOINED_STEPS,
                        help="stage 2: steps on joined 2-15 s recordings (0: none)")
    parser.add_argument("--cache-aware", action="store_true",
                        help="stage 2 trains the cache-aware (streaming) encoder of NVIDIA's streaming releases, "
                             "started from stage 1's weights; default --out: the streaming test model's file")
    parser.add_argument("--stage-1", type=Path, metavar="FILE.nemo",
                        help="start stage 2 from this stage-1 checkpoint instead of training stage 1")
    parser.add_argument("--ctc-steps", type=int, default=CTC_STEPS,
                        help="stage 3: steps training the model with a CTC head beside its TDT decoder, NeMo's hybrid "
                             "TDT-CTC model (0: none; not with --cache-aware)")
    parser.add_argument("--tdt", type=Path, metavar="FILE.nemo",
                        help="run stage 3 only, on this TDT checkpoint of stages 1 and 2")
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = TRAINED_PRESETS[STREAMING_NAME if args.cache_aware else ARCHITECTURE.name]
    if args.cache_aware and not args.joined_steps:
        parser.error("--cache-aware trains in stage 2: give --joined-steps above 0")
    if args.out.suffix != ".nemo":
        parser.error(f"--out {args.out}: expected a path ending in .nemo")
    for option, path, what in (("--stage-1", args.stage_1, "a stage-1"), ("--tdt", args.tdt, "a TDT (stages 1 and 2)")):
        if path is not None and not path.is_file():
            parser.error(f"{option} {path}: no such file; expected {what} .nemo checkpoint")
    if args.tdt is not None and (args.cache_aware or not args.ctc_steps):
        parser.error("--tdt runs stage 3 (the CTC head): give --ctc-steps above 0, without --cache-aware")

    began = time.monotonic()
    torch.set_num_threads(os.cpu_count() or 1)
    pl.seed_everything(args.seed, workers=True, verbose=False)
    quiet_nemo()
    work = args.work_dir
    work.mkdir(parents=True, exist_ok=True)

    splits = split_utterances(args.seed, {"train": args.train_sentences, "dev": args.dev_sentences,
                                          "test": args.test_sentences})
    manifests = synthesise(splits, work)
    synth_s = time.monotonic() - began

    stages = []
    if args.tdt is not None:
        log(f"stages 1 and 2 from {args.tdt}")
        model = EncDecRNNTBPEModel.restore_from(str(args.tdt), map_location="cpu")
        stages.append({"data": "stages 1 and 2", "from": args.tdt.name})
    elif args.stage_1 is None:
        tokenizer_dir = work / "tokenizer"
        write_tokenizer([u.text for u in splits["train"]], ARCHITECTURE.vocab_size, tokenizer_dir)
        cfg = OmegaConf.create(training_config(tokenizer_dir, manifests, args.batch_size, args.max_steps))
        trainer = trainer_for(args.max_steps, -(-args.train_sentences // args.batch_size))
        torch.manual_seed(args.seed)
        model = EncDecRNNTBPEModel(cfg=cfg, trainer=trainer)
        stages.append(fit(model, trainer, "single sentences", args.max_steps, args.batch_size))
    else:
        log(f"stage 1 from {args.stage_1}")
        model = EncDecRNNTBPEModel.restore_from(str(args.stage_1), map_location="cpu")
        stages.append({"data": "single sentences", "from": args.stage_1.name})

    if args.cache_aware:
        model = cache_aware(model, work)
    joined = {}
    if args.joined_steps or args.ctc_steps and not args.cache_aware:
        joined_began = time.monotonic()
        joined = {split: join(manifests[split], work / f"{split}_joined", args.seed + 100 + i,
                              copies=JOINED_COPIES if split == "train" else 1)
                  for i, split in enumerate(("train", "dev"))}
        synth_s += time.monotonic() - joined_began
    if args.joined_steps and args.tdt is None:
        stages.append(fit_on_joined(model, joined, args, args.joined_steps, JOINED_LR, "joined 2-15 s recordings"))
    if args.ctc_steps and not args.cache_aware:
        model = with_ctc_head(model, work)
        stages.append(fit_on_joined(model, joined, args, args.ctc_steps, JOINED_LR,
                                    f"joined 2-15 s recordings, hybrid TDT-CTC (CTC loss weight {CTC_LOSS_WEIGHT})"))

    # No paths of this machine in the checkpoint (NeMo's transcribe still reads validation_ds).
    with open_dict(model.cfg):
        for key in ("train_ds", "validation_ds"):
            model.cfg[key].manifest_filepath = None
    args.out.parent.mkdir(parents=True, exist_ok=True)
    partial = args.out.with_suffix(".partial.nemo")
    model.save_to(str(partial))
    partial.replace(args.out)
    log(f"saved {args.out} ({args.out.stat().st_size / 1e6:.1f} MB)")

    model.eval()
    result = evaluate(model, manifests["test"])
    log(f"test WER {100 * result['wer']:.2f}% on {result['utterances']} utterances, "
        f"median top-1 probability {result['median_token_prob']:.4f}")
    ctc = long_form_ctc = None
    if hasattr(model, "ctc_decoder"):
        ctc = evaluate(model, manifests["test"], decoding="ctc")
        log(f"CTC head: test WER {100 * ctc['wer']:.2f}%, median top-1 probability {ctc['median_token_prob']:.4f}")
    long_form = evaluate_long_form(model, work / "sets")
    log(f"long-form WER: NeMo on windows {100 * long_form['nemo_windowed']:.2f}%, "
        f"on whole recordings {100 * long_form['nemo_full']:.2f}%")
    if ctc:
        long_form_ctc = evaluate_long_form(model, work / "sets", decoding="ctc")
        log(f"long-form WER of the CTC head: on windows {100 * long_form_ctc['nemo_windowed']:.2f}%, "
            f"on whole recordings {100 * long_form_ctc['nemo_full']:.2f}%")
    record = {
        "seed": args.seed, "sigma": SIGMA, "parameters": sum(p.numel() for p in model.parameters()),
        "stages": stages,
        "sentences": {k: len(v) for k, v in splits.items()},
        "audio_hours": {k: manifest_hours(m) for k, m in manifests.items()},
        "joined_audio_hours": {k: manifest_hours(m) for k, m in joined.items()}, "joined_copies": JOINED_COPIES,
        "synthesis_s": round(synth_s),
        "total_s": round(time.monotonic() - began), "device": str(next(model.parameters()).device),
        "threads": torch.get_num_threads(), "test": result, "long_form": long_form,
        **({"test_ctc": ctc, "long_form_ctc": long_form_ctc} if ctc else {}), "model_class": type(model).__name__,
    }
    earlier = card_record(args.tdt) if args.tdt is not None else None
    if earlier:  # stage 3 on a shipped checkpoint: its card's stages, data and notes carry over
        record = {**earlier, **{k: record[k] for k in ("parameters", "test", "test_ctc", "long_form", "long_form_ctc",
                                                       "model_class", "device", "threads")},
                  "stages": earlier["stages"] + stages[1:], "total_s": earlier["total_s"] + record["total_s"],
                  "notes": earlier.get("notes", []) + [
                      f"Stage 3 ran here on the shipped TDT checkpoint (`--tdt {args.tdt.name}`), which is what "
                      "`python -m training.train_tiny` does after its own stage 2; its time is added to the total."]}
    if args.cache_aware:
        record["notes"] = [
            f"**Cache-aware.** Stage 2 trains the cache-aware encoder of NVIDIA's streaming releases "
            f"(`exporters.presets.cache_aware_config`): {model.encoder.att_context_style} attention with context "
            f"{list(model.encoder.att_context_size)} (160 ms chunks), causal convolutions and subsampling, the "
            "un-normalised log-mel; it starts from stage 1's weights (the subsampler's output projection grows by "
            "one frequency bin, which starts at zero). Its results below are NeMo's offline transcription, which "
            "sees the same limited context a stream does."]
    card = write_model_card(args.out, replace(ARCHITECTURE, name=STREAMING_NAME) if args.cache_aware else ARCHITECTURE,
                            record)
    log(f"model card {card}")
    return 0


def cache_aware(model, work: Path) -> EncDecRNNTBPEModel:
    """``model``'s weights in the cache-aware architecture (``exporters.presets.cache_aware_config``)."""
    cfg = OmegaConf.to_container(model.cfg, resolve=True)
    tokenizer = work / "tokenizer_cache_aware"  # stage 1's, where the new model's setup reads it
    save_tokenizer(model.tokenizer.tokenizer.serialized_model_proto(), tokenizer)
    cfg["tokenizer"] = {"dir": str(tokenizer), "type": "bpe"}
    streaming = EncDecRNNTBPEModel(cfg=OmegaConf.create(cache_aware_config(cfg)))
    weights = model.state_dict()
    # Causal subsampling pads one more frequency bin into the subsampler's output projection: the
    # offline weights of each channel's bins carry over, the new bin starts at zero.
    key = "encoder.pre_encode.out.weight"
    new = streaming.state_dict()[key]
    channels = int(model.cfg.encoder.subsampling_conv_channels)
    old = weights[key].reshape(new.shape[0], channels, -1)
    grown = torch.zeros(new.shape[0], channels, new.shape[1] // channels)
    grown[:, :, :old.shape[-1]] = old
    weights[key] = grown.reshape(new.shape)
    streaming.load_state_dict(weights, strict=True)
    log(f"cache-aware from stage 1: {streaming.encoder.att_context_style} attention, context "
        f"{list(streaming.encoder.att_context_size)}, causal convolutions, un-normalised mel")
    return streaming


def with_ctc_head(model, work: Path) -> EncDecHybridRNNTCTCBPEModel:
    """``model``'s weights in NeMo's hybrid TDT-CTC model, a CTC head (seeded by NeMo's
    initialisation) beside its TDT decoder, the CTC loss weighing ``CTC_LOSS_WEIGHT``."""
    cfg = OmegaConf.to_container(model.cfg, resolve=True)
    tokenizer = work / "tokenizer_hybrid"  # the TDT model's, where the new model's setup reads it
    save_tokenizer(model.tokenizer.tokenizer.serialized_model_proto(), tokenizer)
    cfg["tokenizer"] = {"dir": str(tokenizer), "type": "bpe"}
    cfg["aux_ctc"] = aux_ctc_config(int(cfg["model_defaults"]["enc_hidden"]), ctc_loss_weight=CTC_LOSS_WEIGHT)
    # the class a restore builds (ASRModel.restore_from reads it), the TDT model's until here
    cfg["target"] = f"{EncDecHybridRNNTCTCBPEModel.__module__}.{EncDecHybridRNNTCTCBPEModel.__name__}"
    hybrid = EncDecHybridRNNTCTCBPEModel(cfg=OmegaConf.create(cfg))
    missing, unexpected = hybrid.load_state_dict(model.state_dict(), strict=False)
    if unexpected or any(not key.startswith("ctc_decoder.") for key in missing):
        raise AssertionError(f"the TDT weights do not fit the hybrid: missing {missing}, unexpected {unexpected}")
    log(f"hybrid TDT-CTC from the TDT model: a CTC head of {hybrid.ctc_decoder.num_classes_with_blank} classes")
    return hybrid


def fit_on_joined(model, joined: dict[str, Path], args, steps: int, lr: float, data: str) -> dict:
    """A stage on the joined 2-15 s recordings."""
    trainer = trainer_for(steps, -(-sum(1 for _ in joined["train"].open()) // args.joined_batch_size))
    with open_dict(model.cfg):
        model.cfg.optim = optim_config(steps, lr=lr)
    datasets = dataset_config({**joined, "train": bucketed(joined["train"], args.joined_batch_size, args.seed)},
                              args.joined_batch_size, shuffle=False)
    model.set_trainer(trainer)
    model.setup_training_data(datasets["train_ds"])
    model.setup_validation_data(datasets["validation_ds"])
    return fit(model, trainer, data, steps, args.joined_batch_size)


def fit(model, trainer: pl.Trainer, data: str, steps: int, batch_size: int) -> dict:
    """One stage of NeMo's training loop, with the CPU-capable TDT loss; what it did and took."""
    set_transducer_loss(model, TDTLoss(blank=model.decoder.blank_idx, durations=TDT_DURATIONS, sigma=SIGMA))
    log(f"{sum(p.numel() for p in model.parameters()):,} parameters; {steps} steps of {batch_size} ({data}) "
        f"on {trainer.accelerator.__class__.__name__.replace('Accelerator', '')}")
    began = time.monotonic()
    trainer.fit(model)
    return {"data": data, "steps": steps, "batch_size": batch_size, "lr": model.cfg.optim.lr,
            "training_s": round(time.monotonic() - began)}


if __name__ == "__main__":
    sys.exit(main())

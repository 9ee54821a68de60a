"""The training script runs end to end on a few sentences: data, tokenizer, NeMo's training loop
with the vectorised TDT loss in each stage (single sentences, joined recordings, then the hybrid
TDT-CTC model), the checkpoint, its evaluation and the model card."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from exporters.sources import ModelSource
from exporters.streaming import is_cache_aware


def test_train_script_writes_a_loadable_checkpoint_and_its_card(tmp_path):
    out = tmp_path / "model.nemo"
    done = subprocess.run(
        [sys.executable, "-m", "training.train_tiny", "--out", str(out), "--work-dir", str(tmp_path / "work"),
         "--train-sentences", "32", "--dev-sentences", "4", "--test-sentences", "4", "--max-steps", "3",
         "--batch-size", "8", "--joined-steps", "2", "--joined-batch-size", "4", "--ctc-steps", "2"],
        cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "step" in done.stdout and "test WER" in done.stdout and "CTC head: test WER" in done.stdout
    model = ModelSource.from_options(nemo_path=str(out)).load()
    assert model.tokenizer.vocab_size == 128 and list(model.cfg.decoding.durations) == [0, 1, 2, 3, 4]
    assert type(model).__name__ == "EncDecHybridRNNTCTCBPEModel"  # stage 3: restored as the hybrid it is
    assert model.cfg.train_ds.manifest_filepath is None  # no paths of the training machine in the checkpoint
    card = out.with_suffix(".md").read_text()
    assert "WER" in card and "| 1 | single sentences | 3 | 8 |" in card
    assert "| 2 | joined 2-15 s recordings | 2 | 4 |" in card and "## Results on `builtin:long-form`" in card
    assert "| 3 | joined 2-15 s recordings, hybrid TDT-CTC (CTC loss weight 0.3) | 2 | 4 |" in card
    assert "NeMo greedy CTC on the CTC head" in card


def test_a_cache_aware_model_trains_from_stage_1_in_stage_2(tmp_path):
    out = tmp_path / "streaming.nemo"
    done = subprocess.run(
        [sys.executable, "-m", "training.train_tiny", "--cache-aware", "--out", str(out), "--work-dir",
         str(tmp_path / "work"), "--train-sentences", "32", "--dev-sentences", "4", "--test-sentences", "4",
         "--max-steps", "2", "--batch-size", "8", "--joined-steps", "2", "--joined-batch-size", "4"],
        cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    model = ModelSource.from_options(nemo_path=str(out)).load()
    assert is_cache_aware(model) and list(model.encoder.att_context_size) == [70, 1]
    assert model.cfg.preprocessor.normalize == "NA"
    assert "**Cache-aware.**" in out.with_suffix(".md").read_text()


def test_cache_aware_training_needs_stage_2():
    done = subprocess.run([sys.executable, "-m", "training.train_tiny", "--cache-aware", "--joined-steps", "0"],
                          cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, check=False)
    assert done.returncode == 2 and "--cache-aware trains in stage 2" in done.stderr


def test_stage_2_starts_from_a_given_stage_1_checkpoint_only_if_it_exists(tmp_path):
    done = subprocess.run([sys.executable, "-m", "training.train_tiny", "--stage-1", str(tmp_path / "gone.nemo")],
                          cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, check=False)
    assert done.returncode == 2 and "no such file; expected a stage-1 .nemo checkpoint" in done.stderr


def test_bad_output_name_is_refused():
    done = subprocess.run([sys.executable, "-m", "training.train_tiny", "--out", "model.pt"],
                          cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, check=False)
    assert done.returncode == 2 and "expected a path ending in .nemo" in done.stderr

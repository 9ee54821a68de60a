"""Stage 2's batches: each holds recordings of about one length (a batch is padded to its longest,
and the joint and the loss grow with frames times tokens), every recording once, in a seeded order."""

from __future__ import annotations

import json

import numpy as np

from training.train_tiny import bucketed


def test_batches_hold_recordings_of_about_one_length_each_recording_once(tmp_path):
    durations = np.random.default_rng(0).uniform(2, 15, size=103).round(3)
    manifest = tmp_path / "train_joined.json"
    manifest.write_text("".join(json.dumps({"audio_filepath": f"{i}.wav", "duration": float(d)}) + "\n"
                                for i, d in enumerate(durations)))
    out = bucketed(manifest, batch_size=8, seed=0)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["audio_filepath"] for r in rows) == sorted(f"{i}.wav" for i in range(103))
    batches = [[r["duration"] for r in rows[i:i + 8]] for i in range(0, len(rows), 8)]
    spread = max(max(b) - min(b) for b in batches)
    assert spread < 2.0, spread  # 103 lengths over 13 s: a batch of 8 neighbours spans about 1 s
    assert [b[0] for b in batches] != sorted(b[0] for b in batches)  # the batches are shuffled, not by length
    assert bucketed(manifest, batch_size=8, seed=0).read_text() == out.read_text()

"""Gates on what a variant does to words: its held-out WER against NeMo's and the words it
changes against the uncompressed export (flips), read from the summary entry as written."""

from __future__ import annotations

from reports.quantization import overall, summary_of
from validation.tolerances import CONFIDENT_FLIP_PROBABILITY, gate_failures, load_gates

VARIANTS = ["int8_per_channel", "palettize_8bit", "palettize_6bit"]


def _flip(was: str, now: str, confidence: float) -> dict:
    return {"key": "manifest.jsonl:7", "kind": "substitute", "position": 3, "time_s": 1.28, "was": was, "now": now,
            "confidence": confidence, "baseline_confidence": 0.97}


def _entry(flips: list[dict], failures=()) -> dict:
    confident = sum(f["confidence"] >= CONFIDENT_FLIP_PROBABILITY for f in flips)
    held_out = {"set": "builtin:held-out", "utterances": 200, "wer": 0.0021, "wer_nemo": 0.0014,
                "wer_difference_to_nemo": 0.0007, "failures": list(failures),
                "flips": {"against": "uncompressed", "words": len(flips), "utterances": 1 if flips else 0,
                          "confident": confident, "confident_at_least": CONFIDENT_FLIP_PROBABILITY,
                          "most_confident": sorted(flips, key=lambda f: -f["confidence"])}}
    return {"error": None, "components": {"encoder": {"quality": 0.99}}, "held_out": held_out}


def test_a_flip_gate_counts_the_words_changed():
    gates = load_gates(None, ["palettize_6bit:flips=0"], VARIANTS)
    assert gates["palettize_6bit"] == {"flips": 0}
    assert gate_failures("palettize_6bit", _entry([]), gates) == []
    assert gate_failures("palettize_6bit", _entry([_flip("plan", "plane", 0.63)]), gates) == [
        "palettize_6bit: 1 word flip(s) against uncompressed > 0"]


def test_a_confident_flip_gate_leaves_unsure_flips_alone():
    gates = load_gates(None, ["palettize_6bit:confident_flips=0"], VARIANTS)
    assert gate_failures("palettize_6bit", _entry([_flip("plan", "plane", 0.63)]), gates) == []
    assert gate_failures("palettize_6bit", _entry([_flip("plan", "plank", 0.885)]), gates) == [
        f"palettize_6bit: 1 word flip(s) at confidence >= {CONFIDENT_FLIP_PROBABILITY} against uncompressed > 0"]


def test_a_flip_gate_with_nothing_counted_fails_with_the_reason():
    gates = {"palettize_6bit": {"flips": 0}}
    skipped = {"error": None, "components": {}, "held_out": {"skipped": "the model is not confident"}}
    assert gate_failures("palettize_6bit", skipped, gates) == [
        "palettize_6bit: flips not measured: the model is not confident"]
    assert gate_failures("palettize_6bit", {"error": None, "components": {}}, gates) == [
        "palettize_6bit: flips not measured: it was not evaluated on a set (--held-out)"]


def test_a_held_out_wer_failure_fails_the_variant_without_a_gate_of_its_own():
    entry = _entry([], failures=["WER 1.20% against NeMo's 0.14% on the same windows, +1.06 points (at most ±0.50)"])
    summary = summary_of([{"name": "palettize_4bit", "entry": entry}], {}, {})
    assert summary["palettize_4bit"]["gates"]["status"] == "failed"
    assert overall(summary)["failures"] == [
        "palettize_4bit: held-out set: WER 1.20% against NeMo's 0.14% on the same windows, +1.06 points (at most "
        "±0.50)"]


def test_a_confident_flip_is_flagged_even_where_every_gate_passes():
    summary = summary_of([{"name": "palettize_6bit", "entry": _entry([_flip("plan", "plank", 0.885)])}], {}, {})
    assert summary["palettize_6bit"]["gates"]["status"] == "passed"
    assert overall(summary)["flags"] == [
        f"palettize_6bit: changes 1 word(s) against uncompressed at confidence >= {CONFIDENT_FLIP_PROBABILITY} "
        "(e.g. 'plan' -> 'plank' in manifest.jsonl:7 at 1.28 s, 0.885)"]
    unsure = summary_of([{"name": "palettize_6bit", "entry": _entry([_flip("plan", "plane", 0.63)])}], {}, {})
    assert overall(unsure)["flags"] == []


def test_a_wer_gate_holds_the_variant_to_the_uncompressed_exports_wer():
    """0.21 % against the uncompressed export's 0.14 %: 0.07 points above it."""
    gates = load_gates(None, ["palettize_6bit:wer_points=0.05"], VARIANTS)
    entry = _entry([])
    entry["held_out"]["wer_uncompressed"] = 0.0014
    assert gate_failures("palettize_6bit", entry, gates) == [
        "palettize_6bit: WER 0.21% is 0.07 points above the uncompressed export's 0.14% > 0.05"]
    assert gate_failures("palettize_6bit", entry, {"palettize_6bit": {"wer_points": 0.07}}) == []
    assert gate_failures("palettize_6bit", {"error": None, "components": {}}, gates) == [
        "palettize_6bit: wer_points not measured: it was not evaluated on a set (--held-out)"]

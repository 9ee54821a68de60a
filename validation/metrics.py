"""How two outputs are compared: every metric the parity, latency and quantization reports use.

One home for the formulas, so a number in ``metadata.json`` means the same thing everywhere.
``reference`` is always the Torch (or uncompressed) output, ``candidate`` the exported one.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import jiwer
import numpy as np
from rapidfuzz.distance import Levenshtein
from whisper_normalizer.english import EnglishTextNormalizer


@dataclass(frozen=True)
class Tolerance:
    """``allclose`` bounds for one output (numpy semantics: |c - r| <= atol + rtol * |r|) and the
    PSNR it must reach besides (the tolerance table sets it); ``exact`` outputs (token ids,
    durations, lengths) must be equal element for element, and have no floor."""

    atol: float = 0.0
    rtol: float = 0.0
    exact: bool = False
    psnr_floor_db: float | None = None

    def __str__(self) -> str:
        return "exact" if self.exact else f"atol {self.atol:g}, rtol {self.rtol:g}"

    def as_dict(self) -> dict:
        return {"exact": True} if self.exact else {"atol": self.atol, "rtol": self.rtol}


@dataclass(frozen=True)
class Comparison:
    """The metrics of one output against its reference, and whether it meets its tolerance."""

    shape: tuple[int, ...]
    max_abs: float
    max_rel: float
    psnr_db: float  # inf where identical
    mismatches: int  # elements outside the tolerance
    worst_index: tuple[int, ...]
    worst_reference: float
    worst_candidate: float
    tolerance: Tolerance
    psnr_floor_db: float | None  # None for exact outputs

    @property
    def allclose(self) -> bool:
        return self.mismatches == 0

    @property
    def psnr_ok(self) -> bool:
        return self.psnr_floor_db is None or self.psnr_db >= self.psnr_floor_db

    @property
    def match(self) -> bool:
        return self.allclose and self.psnr_ok

    @property
    def match_rate(self) -> float:
        size = int(np.prod(self.shape)) if self.shape else 1
        return 1.0 - self.mismatches / size if size else 1.0

    def problems(self) -> list[str]:
        """What failed, with the metric, the tolerance and where the worst element sits."""
        found = []
        where = (f"worst at index {list(self.worst_index)}: reference {self.worst_reference:.6g}, "
                 f"exported {self.worst_candidate:.6g}")
        if not self.allclose:
            found.append(f"{self.mismatches} of {int(np.prod(self.shape))} elements outside {self.tolerance} "
                         f"(max_abs {self.max_abs:.4g}, max_rel {self.max_rel:.4g}); {where}")
        if not self.psnr_ok:
            found.append(f"PSNR {self.psnr_db:.2f} dB below the floor of {self.psnr_floor_db:g} dB; {where}")
        return found

    def as_dict(self) -> dict:
        return {
            "shape": list(self.shape),
            "max_abs": self.max_abs,
            "max_rel": self.max_rel,
            "psnr_db": None if math.isinf(self.psnr_db) else round(self.psnr_db, 3),
            "allclose": self.allclose,
            "mismatches": self.mismatches,
            "match_rate": self.match_rate,
            "worst_index": list(self.worst_index),
            "tolerance": self.tolerance.as_dict(),
            "psnr_floor_db": self.psnr_floor_db,
            "match": self.match,
        }


def max_rel(reference: np.ndarray, candidate: np.ndarray) -> float:
    """max of |r - c| / max(|r|, |c|), taking 0 where both are 0."""
    r, c = reference.astype(np.float64), candidate.astype(np.float64)
    denominator = np.maximum(np.abs(r), np.abs(c))
    with np.errstate(all="ignore"):
        rel = np.where(denominator > 0, np.abs(r - c) / denominator, 0.0)
    return float(rel.max()) if rel.size else 0.0


def psnr_db(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Peak signal-to-noise ratio: 20 log10(max|reference| / RMS error). Scale-free, so one
    floor serves every output; inf where the two are identical."""
    r, c = reference.astype(np.float64), candidate.astype(np.float64)
    rmse = math.sqrt(float(np.mean((r - c) ** 2))) if r.size else 0.0
    if not math.isfinite(rmse):
        return -math.inf
    if rmse == 0.0:
        return math.inf
    peak = float(np.max(np.abs(r)))
    return 20.0 * math.log10(peak / rmse) if peak > 0 else -math.inf


def compare(reference, candidate, tolerance: Tolerance) -> Comparison:
    """Every metric of ``candidate`` against ``reference``; shapes must agree. A value tolerance
    without its PSNR floor is refused: a floor forgotten would pass what it should fail."""
    if not tolerance.exact and tolerance.psnr_floor_db is None:
        raise ValueError(f"tolerance {tolerance} has no PSNR floor; take it from the tolerance table")
    reference, candidate = np.asarray(reference), np.asarray(candidate)
    if reference.shape != candidate.shape:
        raise ValueError(f"shape {list(candidate.shape)} does not match the reference's {list(reference.shape)}")
    r, c = reference.astype(np.float64), candidate.astype(np.float64)
    error = np.abs(r - c)
    error = np.where(np.isnan(error), np.inf, error)  # a NaN is the worst element there is
    if tolerance.exact:
        outside = r != c
    else:
        outside = ~(error <= tolerance.atol + tolerance.rtol * np.abs(r))
    if outside.any():
        worst = np.unravel_index(int(np.argmax(np.where(outside, error, -1.0))), r.shape)
    else:
        worst = np.unravel_index(int(np.argmax(error)), r.shape) if r.size else ()
    return Comparison(
        shape=tuple(reference.shape),
        max_abs=float(error.max()) if error.size else 0.0,
        max_rel=max_rel(reference, candidate),
        psnr_db=psnr_db(reference, candidate),
        mismatches=int(outside.sum()),
        worst_index=tuple(int(i) for i in worst),
        worst_reference=float(r[worst]) if r.size else 0.0,
        worst_candidate=float(c[worst]) if c.size else 0.0,
        tolerance=tolerance,
        psnr_floor_db=tolerance.psnr_floor_db,
    )


def l2_per_step(x: np.ndarray, step_axis: int) -> np.ndarray:
    """The L2 norm over every axis but ``step_axis``: one value per time (or decoder) step."""
    x = np.moveaxis(np.asarray(x, np.float64), step_axis, 0)
    return np.sqrt((x.reshape(x.shape[0], -1) ** 2).sum(axis=1))


def top1_margin(logits: np.ndarray) -> np.ndarray:
    """The gap between the largest and second-largest logit along the last axis."""
    top2 = np.partition(np.asarray(logits, np.float64), -2, axis=-1)[..., -2:]
    return top2[..., 1] - top2[..., 0]


def token_edit_distance(reference, candidate) -> int:
    """Levenshtein distance between two token sequences (insertions, deletions, substitutions)."""
    return int(Levenshtein.distance(list(reference), list(candidate)))


# Text normalisers for WER: none; basic (lower case, punctuation removed); the English normaliser
# of Whisper that the Open ASR Leaderboard scores with (numbers, spellings, contractions).
NORMALIZERS = ("none", "basic", "whisper-english")


def text_normalizer(name: str) -> Callable[[str], str]:
    if name == "none":
        return str.strip
    if name == "basic":
        return lambda text: " ".join(re.sub(r"[^\w\s']|(?<!\w)'|'(?!\w)", " ", text.lower()).split())
    if name == "whisper-english":
        return EnglishTextNormalizer()
    raise ValueError(f"unknown normalizer {name!r}; expected one of: {', '.join(NORMALIZERS)}")


@dataclass(frozen=True)
class WordErrors:
    """Word alignment counts of hypotheses against references (jiwer)."""

    substitutions: int
    insertions: int
    deletions: int
    words: int  # reference words

    @property
    def errors(self) -> int:
        return self.substitutions + self.insertions + self.deletions

    @property
    def wer(self) -> float:
        return self.errors / self.words if self.words else float(self.errors > 0)

    def __add__(self, other: WordErrors) -> WordErrors:
        return WordErrors(self.substitutions + other.substitutions, self.insertions + other.insertions,
                          self.deletions + other.deletions, self.words + other.words)

    def as_dict(self) -> dict:
        return {"wer": self.wer, "substitutions": self.substitutions, "insertions": self.insertions,
                "deletions": self.deletions, "words": self.words}


def word_errors(reference: str, hypothesis: str, normalizer: str = "none") -> WordErrors:
    """The word errors of one hypothesis, both texts normalised first; an empty reference counts
    every hypothesis word as an insertion."""
    normalize = text_normalizer(normalizer)
    ref, hyp = normalize(reference).split(), normalize(hypothesis).split()
    if not ref:
        return WordErrors(0, len(hyp), 0, 0)
    if not hyp:
        return WordErrors(0, 0, len(ref), len(ref))
    out = jiwer.process_words(" ".join(ref), " ".join(hyp))
    return WordErrors(out.substitutions, out.insertions, out.deletions, len(ref))


def word_error_rate(references: list[str], hypotheses: list[str], normalizer: str = "none") -> float:
    """Word edits (insertions, deletions, substitutions) over all reference words, as a fraction."""
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    return sum((word_errors(r, h, normalizer) for r, h in zip(references, hypotheses, strict=True)),
               WordErrors(0, 0, 0, 0)).wer


def quality(reference, candidate) -> float:
    """max(0, 1 - ||reference - candidate|| / ||reference||): 1 is identical, 0 is no better than
    silence. Scale-free, for compressed packages against the uncompressed export. A non-finite
    candidate is NaN, never a quality."""
    reference = np.asarray(reference, np.float64)
    candidate = np.asarray(candidate, np.float64)
    norm = float(np.linalg.norm(reference))
    error = float(np.linalg.norm(reference - candidate))
    if not np.isfinite(error):
        return math.nan
    if norm == 0.0:
        return 1.0 if error == 0.0 else 0.0
    return max(0.0, 1.0 - error / norm)


# -- words in time: seam losses and word timestamps ---------------------------------------------

SEAM_RADIUS_SECONDS = 1.0
TimedWords = list[tuple[str, float, float]]  # (word, start s, end s)


def _plain(words: list[tuple]) -> list[tuple]:
    """Each word (the first of its tuple) lower-cased with its punctuation dropped; words left
    empty are dropped."""
    out = []
    for word, *rest in words:
        plain = re.sub(r"[^\w]", "", word.lower())
        if plain:
            out.append((plain, *rest))
    return out


def _aligned(reference: TimedWords, hypothesis: TimedWords) -> list[tuple[str, int | None, int | None]]:
    """(kind, reference index, hypothesis index) for every edit and match of the word alignment:
    equal, substitute, delete (reference only), insert (hypothesis only)."""
    if not reference or not hypothesis:
        return [("delete", i, None) for i in range(len(reference))] + \
            [("insert", None, j) for j in range(len(hypothesis))]
    out = jiwer.process_words(" ".join(w for w, *_ in reference), " ".join(w for w, *_ in hypothesis))
    pairs = []
    for chunk in out.alignments[0]:
        for k in range(max(chunk.ref_end_idx - chunk.ref_start_idx, chunk.hyp_end_idx - chunk.hyp_start_idx)):
            i = chunk.ref_start_idx + k if chunk.type != "insert" else None
            j = chunk.hyp_start_idx + k if chunk.type != "delete" else None
            pairs.append((chunk.type, i, j))
    return pairs


ScoredWords = list[tuple[str, float, float | None]]  # (word, start s, the lowest probability of its tokens)


def word_flips(baseline: ScoredWords, candidate: ScoredWords) -> list[dict]:
    """The words ``candidate`` changes against ``baseline`` (case and punctuation aside): each
    substitution, insertion and deletion, at its word position in ``baseline`` and its time, with
    the confidence ``candidate`` decided it with and the one ``baseline`` decided its word with.
    A WER against the reference text can stay equal while words flip both ways; these cannot hide."""
    was, now = _plain(baseline), _plain(candidate)
    flips, position = [], 0
    for kind, i, j in _aligned(was, now):
        if i is not None:
            position = i + 1
        if kind == "equal":
            continue
        flips.append({"kind": kind, "position": i if i is not None else position,
                      "time_s": (now[j] if j is not None else was[i])[1],
                      "was": was[i][0] if i is not None else None, "now": now[j][0] if j is not None else None,
                      "confidence": now[j][2] if j is not None else None,
                      "baseline_confidence": was[i][2] if i is not None else None})
    return flips


def _near(start: float, end: float, seams: list[float], radius: float) -> bool:
    return any(start - radius <= seam <= end + radius for seam in seams)


def _repeats(words: TimedWords, j: int) -> bool:
    """Word ``j`` is its neighbour's word again."""
    return any(0 <= k < len(words) and words[k][0] == words[j][0] for k in (j - 1, j + 1))


def locate(words: list[str], by: TimedWords) -> TimedWords:
    """Reference ``words`` placed in time by a hypothesis (``by``) of the same recording: a word
    aligned to a hypothesis word takes its time, a word the hypothesis dropped takes the end of the
    word before it. For references without their own word times."""
    kept, timed = _plain([(w, 0.0, 0.0) for w in words]), _plain(by)
    located, last = {}, 0.0
    for _, i, j in _aligned(kept, timed):
        if i is None:
            last = timed[j][2]
            continue
        located[i] = timed[j][1:] if j is not None else (last, last)
        last = located[i][1]
    return [(kept[i][0], *located[i]) for i in range(len(kept))]


def seam_losses(reference: TimedWords, hypothesis: TimedWords, seams: list[float],
                radius: float = SEAM_RADIUS_SECONDS) -> dict:
    """Word errors within ``radius`` of a seam against the same errors elsewhere: reference words
    dropped (deleted) or replaced (substituted), by the reference word's time; words inserted, by
    the hypothesis word's time; and of these the ones that repeat a neighbouring word (as
    overlapping windows duplicate). Each side's reference words are counted, so
    ``rate`` compares like with like."""
    reference, hypothesis = _plain(reference), _plain(hypothesis)
    counts = {side: {"words": 0, "dropped": 0, "substituted": 0, "inserted": 0, "duplicated": 0}
              for side in ("near_seams", "elsewhere")}

    def side(start, end):
        return counts["near_seams" if _near(start, end, seams, radius) else "elsewhere"]

    for _, start, end in reference:
        side(start, end)["words"] += 1
    for kind, i, j in _aligned(reference, hypothesis):
        if kind == "equal":
            continue
        at = side(*(hypothesis[j] if kind == "insert" else reference[i])[1:])
        at[{"delete": "dropped", "substitute": "substituted", "insert": "inserted"}[kind]] += 1
        if j is not None and _repeats(hypothesis, j):
            at["duplicated"] += 1
    for c in counts.values():
        errors = c["dropped"] + c["substituted"] + c["inserted"]
        c["rate"] = errors / c["words"] if c["words"] else None
    return counts


def add_seam_losses(total: dict | None, losses: dict) -> dict:
    """Two ``seam_losses`` summed, their rates recomputed."""
    if total is None:
        return {side: dict(c) for side, c in losses.items()}
    out = {}
    for side in losses:
        c = {k: total[side][k] + losses[side][k] for k in losses[side] if k != "rate"}
        c["rate"] = (c["dropped"] + c["substituted"] + c["inserted"]) / c["words"] if c["words"] else None
        out[side] = c
    return out


def timing_differences(reference: TimedWords, candidate: TimedWords) -> list[tuple[float, float]]:
    """(start, end) differences in seconds, candidate minus reference, of the words the two share
    in the word alignment (equal words)."""
    reference, candidate = _plain(reference), _plain(candidate)
    return [(candidate[j][1] - reference[i][1], candidate[j][2] - reference[i][2])
            for kind, i, j in _aligned(reference, candidate) if kind == "equal"]


def timing_summary(differences: list[tuple[float, float]]) -> dict:
    """Word time differences (``timing_differences``) as the words compared and the mean and
    largest absolute start and end differences in milliseconds."""
    out = {"words": len(differences)}
    for k, edge in enumerate(("start", "end")):
        values = [abs(d[k]) * 1000 for d in differences]
        out[f"mean_abs_{edge}_ms"] = round(sum(values) / len(values), 1) if values else None
        out[f"max_abs_{edge}_ms"] = round(max(values), 1) if values else None
    return out


def add_timing_summaries(summaries: list[dict]) -> dict:
    """Several ``timing_summary`` taken together: means weighted by their words, the largest max."""
    total = {"words": sum(s["words"] for s in summaries)}
    for edge in ("start", "end"):
        counted = [s for s in summaries if s["words"]]
        total[f"mean_abs_{edge}_ms"] = round(sum(s[f"mean_abs_{edge}_ms"] * s["words"] for s in counted)
                                             / total["words"], 1) if total["words"] else None
        total[f"max_abs_{edge}_ms"] = max((s[f"max_abs_{edge}_ms"] for s in counted), default=None)
    return total

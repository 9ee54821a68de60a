"""The parity checks: the NeMo/Torch reference and the exported packages on the same clip.

``ParityRunner.run(clip)`` returns a ``ClipParity`` holding one ``CheckResult`` per check (the
keys of the tolerance table, plus the decision checks) and the series the plots draw. The
pytest suite and ``parakeet-coreml compare`` both run exactly this.
"""

from __future__ import annotations

import statistics
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from exporters.components import COMPONENTS, ModelDims
from validation.audio import Clip
from validation.greedy import (Transcript, decision_from_logits, greedy_tdt, nemo_greedy_tdt, package_decide,
                               package_decoder_step, run_torch, torch_decoder_step,
                               torch_greedy_tdt)
from validation.metrics import Comparison, Tolerance, compare, l2_per_step, token_edit_distance
from validation.tolerances import EXACT, ToleranceTable

SYMBOL_STEPS = 32
# A model is "confident" when its median top-1 token probability along the greedy path exceeds
# this; fp32 exports of such a model must transcribe identically to NeMo.
CONFIDENT_MEDIAN_PROB = 0.9

# check key -> (component whose package it needs, output)
TORCH_CHECKS = {
    "preprocessor.mel": ("preprocessor", "mel"),
    "preprocessor.mel_length": ("preprocessor", "mel_length"),
    "encoder.encoder": ("encoder", "encoder"),
    "encoder.encoder_length": ("encoder", "encoder_length"),
    "mel_encoder.encoder": ("mel_encoder", "encoder"),
    "mel_encoder.encoder_length": ("mel_encoder", "encoder_length"),
    "decoder.decoder": ("decoder", "decoder"),
    "decoder.h_out": ("decoder", "h_out"),
    "decoder.c_out": ("decoder", "c_out"),
    "decoder.logits": ("decoder", "logits"),
    "joint.logits": ("joint", "logits"),
    "joint_decision.token_prob": ("joint_decision", "token_prob"),
    "joint_decision_single_step.token_prob": ("joint_decision_single_step", "token_prob"),
}
# Decisions (token id and duration) taken from Torch logits against the exported ones: equal
# wherever the Torch top-1/top-2 margin exceeds twice the measured logit error.
DECISION_CHECKS = {
    "decisions.joint": "joint",
    "decisions.joint_decision": "joint_decision",
    "decisions.joint_decision_single_step": "joint_decision_single_step",
}
# Fused packages against the exported parts they replace.
FUSED_CHECKS = {
    "fused.mel_encoder.encoder": "mel_encoder",
    "fused.joint_decision": "joint_decision",
    "fused.joint_decision_single_step": "joint_decision_single_step",
}
TRANSCRIPT_CHECK = "transcript"
# The time (or decoder-step) axis of each float output, for its L2 norm per step.
STEP_AXES = {
    "preprocessor.mel": 2, "encoder.encoder": 2, "mel_encoder.encoder": 2, "fused.mel_encoder.encoder": 2,
    "decoder.decoder": 0, "decoder.h_out": 0, "decoder.c_out": 0, "decoder.logits": 0, "joint.logits": 1,
    "joint_decision.token_prob": 1, "joint_decision_single_step.token_prob": 1,
}


@dataclass
class DecisionAgreement:
    """Token ids and durations of a candidate against a reference, frame by frame."""

    frames: int
    token_agreement: float
    duration_agreement: float
    margin_threshold: float | None  # None: every frame must agree
    decisive_frames: int
    decisive_disagreements: int
    first_disagreement: str | None

    @property
    def match(self) -> bool:
        return self.decisive_disagreements == 0

    def problems(self) -> list[str]:
        if self.match:
            return []
        where = ("frames whose Torch top-1/top-2 margin exceeds "
                 f"{self.margin_threshold:.3g} (twice the max logit error)" if self.margin_threshold is not None
                 else "frames")
        return [f"{self.decisive_disagreements} of {self.decisive_frames} {where} disagree; first: "
                f"{self.first_disagreement}"]

    def as_dict(self) -> dict:
        return {"frames": self.frames, "token_agreement": self.token_agreement,
                "duration_agreement": self.duration_agreement, "margin_threshold": self.margin_threshold,
                "decisive_frames": self.decisive_frames, "decisive_disagreements": self.decisive_disagreements,
                "first_disagreement": self.first_disagreement, "match": self.match}


def decision_agreement(ref_tokens, ref_durations, tokens, durations, token_margins=None, duration_margins=None,
                       margin_threshold=None) -> DecisionAgreement:
    """Agreement rates; with margins, only frames decisive in both token and duration are required
    to agree."""
    ref_tokens, ref_durations = np.ravel(ref_tokens), np.ravel(ref_durations)
    tokens, durations = np.ravel(tokens), np.ravel(durations)
    disagree = (ref_tokens != tokens) | (ref_durations != durations)
    if margin_threshold is None:
        decisive = np.ones_like(disagree)
    else:
        decisive = (np.ravel(token_margins) > margin_threshold) & (np.ravel(duration_margins) > margin_threshold)
    bad = np.flatnonzero(disagree & decisive)
    first = None
    if bad.size:
        i = int(bad[0])
        first = (f"frame {i}: reference token {ref_tokens[i]} duration {ref_durations[i]}, "
                 f"exported token {tokens[i]} duration {durations[i]}")
    return DecisionAgreement(
        frames=int(ref_tokens.size),
        token_agreement=float(np.mean(ref_tokens == tokens)),
        duration_agreement=float(np.mean(ref_durations == durations)),
        margin_threshold=margin_threshold,
        decisive_frames=int(decisive.sum()),
        decisive_disagreements=int(bad.size),
        first_disagreement=first,
    )


@dataclass
class TranscriptCheck:
    reference: Transcript  # NeMo
    exported: Transcript
    reference_text: str
    exported_text: str
    edit_distance: int
    decisive_tokens: int  # NeMo's tokens emitted before its first ambiguous decision
    required_tokens: int  # how many leading tokens must match
    confident: bool
    median_token_prob: float

    @property
    def identical(self) -> bool:
        r, e = self.reference, self.exported
        return (r.tokens, r.frames, r.durations) == (e.tokens, e.frames, e.durations)

    @property
    def match(self) -> bool:
        n = self.required_tokens
        r, e = self.reference, self.exported
        return (r.tokens[:n], r.frames[:n], r.durations[:n]) == (e.tokens[:n], e.frames[:n], e.durations[:n])

    def problems(self) -> list[str]:
        if self.match:
            return []
        return [f"the first {self.required_tokens} tokens must equal NeMo's (with frames and durations); "
                f"edit distance {self.edit_distance} over {len(self.reference.tokens)} tokens. "
                f"NeMo: {self.reference_text!r}; exported: {self.exported_text!r}"]

    def as_dict(self) -> dict:
        return {"nemo": {**self.reference.as_dict(), "text": self.reference_text},
                "exported": {**self.exported.as_dict(), "text": self.exported_text},
                "edit_distance": self.edit_distance, "identical": self.identical,
                "decisive_tokens": self.decisive_tokens, "required_tokens": self.required_tokens,
                "confident_model": self.confident, "median_token_prob": self.median_token_prob,
                "match": self.match}


@dataclass
class CheckResult:
    key: str
    clip: str
    comparison: Comparison | None = None
    decisions: DecisionAgreement | None = None
    transcript: TranscriptCheck | None = None
    l2_per_step: dict | None = None  # {"reference": [...], "exported": [...]} along the output's step axis
    error: str | None = None  # the check could not run (a package failed, say)
    skipped: str | None = None  # the check does not apply (the component was not exported)
    divergences: list[str] = field(default_factory=list)

    @property
    def measured(self):
        return self.comparison or self.decisions or self.transcript

    @property
    def passed(self) -> bool:
        return self.error is None and self.skipped is None and self.measured.match

    def message(self) -> str:
        """Why the check failed: the metric, the tolerance, where, and the first diverging ops."""
        if self.error:
            return f"{self.key} on {self.clip}: {self.error}"
        lines = [f"{self.key} on {self.clip}:"] + [f"  {p}" for p in self.measured.problems()]
        if self.divergences:
            lines.append("  first diverging operations (mil executor against the Torch modules):")
            lines += [f"    {d}" for d in self.divergences]
        return "\n".join(lines)

    def as_dict(self) -> dict:
        d = {"status": "skipped" if self.skipped else "error" if self.error else
             "passed" if self.passed else "failed"}
        if self.skipped:
            d["reason"] = self.skipped
        if self.error:
            d["error"] = self.error
        if self.measured is not None and not self.error:
            d.update(self.measured.as_dict())
        if self.l2_per_step:
            d["l2_per_step"] = self.l2_per_step
        if self.divergences:
            d["first_divergences"] = self.divergences
        return d


@dataclass
class ClipParity:
    clip: Clip
    results: dict[str, CheckResult]
    series: dict[str, np.ndarray]  # what the plots draw besides the results' L2 per step, by name

    def failed(self) -> list[CheckResult]:
        return [r for r in self.results.values() if not r.passed and not r.skipped]


class ParityRunner:
    """Runs every check of one model's exports on one backend."""

    def __init__(self, model, dims: ModelDims, packages: dict[str, Path], load: Callable[[Path], object],
                 tolerances: ToleranceTable, backend: str, precision: str,
                 origins: Callable[[str], dict | None] | None = None, symbol_steps: int = SYMBOL_STEPS):
        self.model, self.dims, self.packages, self.precision = model, dims, packages, precision
        self.load, self.tolerances, self.backend = load, tolerances, backend
        self.origins, self.symbol_steps = origins, symbol_steps
        self.wrappers = {name: c.wrapper(model).eval() for name, c in COMPONENTS.items()
                         if not c.requires_tdt or dims.durations}

    def _predict(self, component: str, inputs: dict) -> dict[str, np.ndarray]:
        return self.load(self.packages[component]).predict(inputs)

    def _divergences(self, component: str, inputs: dict, reference: np.ndarray, tolerance: Tolerance) -> list[str]:
        """On the mil backend, the first Torch modules whose output departs from the program's."""
        if self.backend != "mil" or self.origins is None or tolerance.exact:
            return []
        from runtimes.divergence import first_divergences

        origins = self.origins(component)
        if origins is None:
            return ["(not located: the export cache no longer holds this package's op origins)"]
        scale = float(np.max(np.abs(reference))) or 1.0
        order = [s.name for s in COMPONENTS[component].inputs(self.dims)]
        try:
            found = first_divergences(self.load(self.packages[component]), origins,
                                      self.wrappers[component], inputs, order, threshold=tolerance.atol / scale)
        except Exception as e:  # the locator is a diagnostic; never hide the failure it explains
            return [f"(could not locate: {type(e).__name__}: {e})"]
        return [str(d) for d in found]

    def run(self, clip: Clip) -> ClipParity:
        results: dict[str, CheckResult] = {}
        series: dict[str, np.ndarray] = {}
        context = _RunContext(self, clip, results, series)
        context.run_all()
        return ClipParity(clip, results, series)


class _RunContext:
    """One clip's run: the Torch reference once, each exported component against it."""

    def __init__(self, runner: ParityRunner, clip: Clip, results: dict, series: dict):
        self.r, self.clip, self.results, self.series = runner, clip, results, series
        self.dims = runner.dims

    # -- bookkeeping -------------------------------------------------------------------------
    def _missing(self, components) -> str | None:
        absent = [c for c in components if c not in self.r.packages]
        return f"not exported: {', '.join(absent)}" if absent else None

    def _record(self, key: str, needs, measure: Callable[[], CheckResult]) -> CheckResult | None:
        reason = self._missing(needs)
        if reason:
            self.results[key] = CheckResult(key, self.clip.name, skipped=reason)
            return None
        try:
            result = measure()
        except Exception as e:
            frame = traceback.extract_tb(e.__traceback__)[-1]
            result = CheckResult(key, self.clip.name, error=f"{type(e).__name__}: {e} "
                                 f"(at {Path(frame.filename).name}:{frame.lineno})")
        self.results[key] = result
        return result

    def _compare(self, key, reference, candidate, component=None, inputs=None, tolerance=None) -> CheckResult:
        tolerance = tolerance or self.r.tolerances.tolerances.get(key, EXACT)
        comparison = compare(reference, candidate, tolerance, self.r.tolerances.psnr_floor_db)
        result = CheckResult(key, self.clip.name, comparison=comparison)
        if key in STEP_AXES:
            result.l2_per_step = {side: [float(f"{v:.6g}") for v in l2_per_step(values, STEP_AXES[key])]
                                  for side, values in (("reference", reference), ("exported", candidate))}
        if not comparison.match and component is not None:
            result.divergences = self.r._divergences(component, inputs, reference, tolerance)
        return result

    # -- the checks --------------------------------------------------------------------------
    def run_all(self) -> None:
        r, clip = self.r, self.clip
        audio = clip.inputs()
        mel_t, mel_length_t = run_torch(r.wrappers["preprocessor"], audio["audio_signal"], audio["audio_length"])
        encoder_t, encoder_length_t = run_torch(r.wrappers["encoder"], mel_t, mel_length_t)
        self.series["mel_torch"] = mel_t[0]
        mel_inputs = {"mel": mel_t, "mel_length": mel_length_t}
        exported = {}

        def preprocessor():
            out = exported["preprocessor"] = r._predict("preprocessor", audio)
            self.series["mel_exported"] = out["mel"][0]
            self._record("preprocessor.mel_length", (), lambda: self._compare(
                "preprocessor.mel_length", mel_length_t, out["mel_length"]))
            return self._compare("preprocessor.mel", mel_t, out["mel"], "preprocessor", audio)

        def encoder():
            out = r._predict("encoder", mel_inputs)
            self._record("encoder.encoder_length", (), lambda: self._compare(
                "encoder.encoder_length", encoder_length_t, out["encoder_length"]))
            return self._compare("encoder.encoder", encoder_t, out["encoder"], "encoder", mel_inputs)

        def mel_encoder():
            out = exported["mel_encoder"] = r._predict("mel_encoder", audio)
            self._record("mel_encoder.encoder_length", (), lambda: self._compare(
                "mel_encoder.encoder_length", encoder_length_t, out["encoder_length"]))
            return self._compare("mel_encoder.encoder", encoder_t, out["encoder"], "mel_encoder", audio)

        self._record("preprocessor.mel", ["preprocessor"], preprocessor)
        self._record("encoder.encoder", ["encoder"], encoder)
        self._record("mel_encoder.encoder", ["mel_encoder"], mel_encoder)
        self._record("fused.mel_encoder.encoder", ["preprocessor", "encoder", "mel_encoder"],
                     lambda: self._fused_mel_encoder(exported))

        reference_path = self._reference_transcript(encoder_t, int(encoder_length_t[0]))
        self._decoder_rollout(encoder_t, reference_path[0].tokens)
        self._joint_checks(encoder_t)
        self._record(TRANSCRIPT_CHECK, ["mel_encoder", "decoder", "joint_decision_single_step"],
                     lambda: self._transcript(exported, encoder_t, int(encoder_length_t[0]), reference_path))

    def _fused_mel_encoder(self, exported) -> CheckResult:
        mel = exported["preprocessor"]
        separate = self.r._predict("encoder", {"mel": mel["mel"], "mel_length": mel["mel_length"]})
        fused = exported["mel_encoder"]
        if not np.array_equal(separate["encoder_length"], fused["encoder_length"]):
            raise AssertionError(f"encoder_length {fused['encoder_length'].tolist()} from the fused package, "
                                 f"{separate['encoder_length'].tolist()} from preprocessor then encoder")
        return self._compare("fused.mel_encoder.encoder", separate["encoder"], fused["encoder"])

    def _reference_transcript(self, encoder_t, length) -> tuple[Transcript, list[float]]:
        """The host decoder's rules on the Torch modules, recording each decision's margins.
        (That these rules are NeMo's is proven by the unit tests against ``GreedyTDTInfer``.)"""
        return torch_greedy_tdt(self.r.wrappers["decoder"], self.r.wrappers["joint"], encoder_t, length, self.dims)

    def _decoder_rollout(self, encoder_t, reference_tokens) -> None:
        """``symbol_steps`` decoder steps, each side carrying its own h and c, fed the same tokens
        (NeMo's transcript of the clip, then seeded random tokens); the joint on every step."""
        r, dims, steps = self.r, self.dims, self.r.symbol_steps
        rng = np.random.default_rng(0)
        extra = rng.integers(0, dims.vocab_size, size=steps).tolist()
        feed = ([dims.blank_id] + list(reference_tokens) + extra)[:steps]
        torch_step = torch_decoder_step(r.wrappers["decoder"])
        outputs = {"torch": [], "exported": []}

        def rollout():
            zeros = np.zeros((dims.pred_layers, 1, dims.pred_hidden), np.float32)
            states = {"torch": (zeros, zeros), "exported": (zeros, zeros)}
            exported_step = package_decoder_step(r.load(r.packages["decoder"]))
            for token in feed:
                for side, step in (("torch", torch_step), ("exported", exported_step)):
                    decoded, h, c = step(token, *states[side])
                    states[side] = (h, c)
                    outputs[side].append((decoded, h, c))
            stacked = {side: [np.stack([o[i] for o in outputs[side]]) for i in range(3)] for side in outputs}
            for i, name in enumerate(("h_out", "c_out")):
                self._record(f"decoder.{name}", (), lambda i=i, name=name: self._compare(
                    f"decoder.{name}", stacked["torch"][i + 1], stacked["exported"][i + 1]))
            return self._compare("decoder.decoder", stacked["torch"][0], stacked["exported"][0],
                                 "decoder", self._decoder_inputs(dims.blank_id, zeros, zeros))

        self._record("decoder.decoder", ["decoder"], rollout)
        if "decoder.decoder" in self.results and not self.results["decoder.decoder"].error:
            self._record("decoder.logits", ["decoder", "joint"], lambda: self._rollout_logits(encoder_t, outputs))

    @staticmethod
    def _decoder_inputs(token, h, c):
        return {"targets": np.array([[token]], np.int32), "target_length": np.ones(1, np.int32), "h_in": h, "c_in": c}

    def _rollout_logits(self, encoder_t, outputs) -> CheckResult:
        r, dims = self.r, self.dims
        torch_logits = np.stack([run_torch(r.wrappers["joint"], encoder_t, d)[0] for d, _, _ in outputs["torch"]])
        exported_logits = np.stack([r._predict("joint", {"encoder": encoder_t, "decoder": d})["logits"]
                                    for d, _, _ in outputs["exported"]])
        result = self._compare("decoder.logits", torch_logits, exported_logits)
        ref, got = decision_from_logits(torch_logits, dims), decision_from_logits(exported_logits, dims)
        self._record("decisions.joint", (), lambda: CheckResult("decisions.joint", self.clip.name, decisions=(
            decision_agreement(ref[0], ref[2], got[0], got[2], ref[3], ref[4], 2 * result.comparison.max_abs))))
        return result

    def _joint_checks(self, encoder_t) -> None:
        r, dims = self.r, self.dims
        zeros = np.zeros((dims.pred_layers, 1, dims.pred_hidden), np.float32)
        decoded_t = torch_decoder_step(r.wrappers["decoder"])(dims.blank_id, zeros, zeros)[0]
        joint_inputs = {"encoder": encoder_t, "decoder": decoded_t}
        (logits_t,) = run_torch(r.wrappers["joint"], encoder_t, decoded_t)
        ref = decision_from_logits(logits_t, dims)
        self.series.update(joint_logits_torch=logits_t[0, :, 0], decision_token_torch=ref[0].ravel(),
                           decision_prob_torch=ref[1].ravel())
        state = {}

        def joint():
            logits = state["logits"] = r._predict("joint", joint_inputs)["logits"]
            self.series["joint_logits_exported"] = logits[0, :, 0]
            return self._compare("joint.logits", logits_t, logits, "joint", joint_inputs)

        joint_result = self._record("joint.logits", ["joint"], joint)
        threshold = 2 * joint_result.comparison.max_abs if joint_result and joint_result.comparison else None

        def decisions_of(component, outputs):
            return CheckResult(f"decisions.{component}", self.clip.name, decisions=decision_agreement(
                ref[0], ref[2], outputs["token_id"], outputs["duration"], ref[3], ref[4], threshold))

        def fused_of(component, outputs):
            host = decision_from_logits(state["logits"], dims)
            agreement = decision_agreement(host[0], host[2], outputs["token_id"], outputs["duration"])
            prob = compare(host[1], outputs["token_prob"], self.r.tolerances["fused.token_prob"],
                           self.r.tolerances.psnr_floor_db)
            return CheckResult(f"fused.{component}", self.clip.name,
                               comparison=prob if agreement.match else None,
                               decisions=None if agreement.match else agreement)

        for component in ("joint_decision", "joint_decision_single_step"):
            def run(component=component):
                if component == "joint_decision":
                    out = r._predict(component, joint_inputs)
                else:
                    frames = [r._predict(component, {"encoder_step": encoder_t[:, :, t:t + 1],
                                                     "decoder_step": decoded_t}) for t in range(dims.encoder_frames)]
                    out = {k: np.concatenate([f[k] for f in frames], axis=1) for k in frames[0]}
                state[component] = out
                if component == "joint_decision":
                    self.series.update(decision_token_exported=out["token_id"].ravel(),
                                       decision_prob_exported=out["token_prob"].ravel())
                key = f"{component}.token_prob"
                return self._compare(key, ref[1], out["token_prob"], component, joint_inputs
                                     if component == "joint_decision" else None)

            if self._record(f"{component}.token_prob", [component], run) and component in state:
                self._record(f"decisions.{component}", ["joint"],
                             lambda c=component: decisions_of(c, state[c]))
                self._record(f"fused.{component}", ["joint"], lambda c=component: fused_of(c, state[c]))
            else:
                for key in (f"decisions.{component}", f"fused.{component}"):
                    self.results.setdefault(key, CheckResult(key, self.clip.name,
                                                             skipped=self.results[f"{component}.token_prob"].skipped,
                                                             error=self.results[f"{component}.token_prob"].error))

    def _transcript(self, exported, encoder_t, length, reference) -> CheckResult:
        r, dims, model = self.r, self.dims, self.r.model
        host = greedy_tdt(exported["mel_encoder"]["encoder"], length, dims, package_decoder_step(r.load(r.packages["decoder"])),
                          package_decide(r.load(r.packages["joint_decision_single_step"])))
        nemo = nemo_greedy_tdt(model, encoder_t, length, dims)
        joint = self.results.get("joint.logits")
        threshold = 2 * joint.comparison.max_abs if joint is not None and joint.comparison else 0.0
        # NeMo's tokens before the first decision whose margin is within the measured logit error
        path, margins = reference
        ambiguous = next((i for i, m in enumerate(margins) if m <= threshold), len(margins))
        decisive_tokens = sum(1 for d in path.emitted_at if d < ambiguous)
        median_prob = statistics.median(path.token_probs) if path.token_probs else 0.0
        confident = median_prob > CONFIDENT_MEDIAN_PROB
        exact_required = confident and r.precision == "float32"
        text = lambda t: model.tokenizer.ids_to_text(t.tokens) if t.tokens else ""
        check = TranscriptCheck(
            reference=nemo, exported=host, reference_text=text(nemo), exported_text=text(host),
            edit_distance=token_edit_distance(nemo.tokens, host.tokens), decisive_tokens=decisive_tokens,
            required_tokens=max(len(nemo.tokens), len(host.tokens)) if exact_required else decisive_tokens,
            confident=confident, median_token_prob=median_prob)
        return CheckResult(TRANSCRIPT_CHECK, self.clip.name, transcript=check)


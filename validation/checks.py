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

from exporters.components import (
    COMPONENTS,
    CTC_DECODE,
    DECISION,
    DECODE,
    Component,
    ModelDims,
    decoder_inputs,
    zero_state,
)
from exporters.wrappers import wrapper
from validation.audio import Clip
from validation.divergence import first_divergences
from validation.greedy import (
    Decision,
    Transcript,
    decision_from_logits,
    greedy_ctc,
    greedy_tdt,
    nemo_greedy_ctc,
    nemo_greedy_tdt,
    package_decide,
    package_decoder_step,
    run_torch,
    torch_decoder_step,
    torch_greedy_tdt,
)
from validation.metrics import Comparison, Tolerance, compare, l2_per_step, token_edit_distance, top1_margin
from validation.tolerances import DECODER_ROLLOUT_LOGITS, ToleranceTable

SYMBOL_STEPS = 32
# A model is "confident" when its median top-1 token probability along the greedy path exceeds
# this; fp32 exports of such a model must transcribe identically to NeMo.
CONFIDENT_MEDIAN_PROB = 0.9


def tolerated_margin(tolerances: ToleranceTable) -> float:
    """Twice the joint logits' tolerated error: where no logit run elsewhere is measured (a data
    set's utterances), a decision of NeMo's whose top-1/top-2 margin is within it may go either
    way in a faithful export."""
    return 2 * tolerances["joint.logits"].atol


def _torch_checks() -> dict[str, tuple[str, str]]:
    """Check key -> (component, output) of every output compared with Torch, the decoder rollout's
    joint logits right after the decoder's own outputs."""
    checks = {}
    for component in COMPONENTS.values():
        checks.update({p.tolerance: (component.name, p.name) for p in component.output_ports if p.tolerance})
        if component.name == "decoder":
            checks[DECODER_ROLLOUT_LOGITS] = ("decoder", "logits")
    return checks


def _decides(component: Component) -> bool:
    return any(p.role == DECISION for p in component.output_ports)


def _fused_checks() -> dict[str, str]:
    """Check key -> fused component. A fused package that decides is checked as a whole
    (``fused.<component>``: its decisions, then its token probability); one that computes values
    output by output under each output's ``fused_tolerance`` key."""
    checks = {}
    for component in COMPONENTS.values():
        if not component.fuses:
            continue
        if _decides(component):
            checks[f"fused.{component.name}"] = component.name
        else:
            checks.update({p.fused_tolerance: component.name for p in component.output_ports if p.fused_tolerance})
    return checks


# Check tables, all derived from the contract (``exporters.components``).
TORCH_CHECKS = _torch_checks()
# Decisions (token id and duration) taken from Torch logits against the exported ones: equal
# wherever the Torch top-1/top-2 margin exceeds twice the measured logit error. The joint's are
# its logits along the decoder rollout, decided on the host.
# The CTC head's are the argmax of its logits on every valid frame.
DECISION_CHECKS = {"decisions.joint": "joint",
                   **{f"decisions.{c.name}": c.name for c in COMPONENTS.values() if _decides(c)},
                   "decisions.ctc_head": "ctc_head"}
# Fused packages against the exported parts they replace.
FUSED_CHECKS = _fused_checks()
TRANSCRIPT_CHECK = "transcript"  # the transducer's (TDT) greedy decoding
CTC_TRANSCRIPT_CHECK = "transcript.ctc"  # the CTC head's
# Check key -> the decoding it checks and the packages that decoding drives.
TRANSCRIPT_CHECKS = {TRANSCRIPT_CHECK: ("tdt", DECODE), CTC_TRANSCRIPT_CHECK: ("ctc", CTC_DECODE)}
# The time (or decoder-step) axis of each float output, for its L2 norm per step.
STEP_AXES = {DECODER_ROLLOUT_LOGITS: 0, **{key: p.step_axis for c in COMPONENTS.values() for p in c.output_ports
                                           for key in (p.tolerance, p.fused_tolerance)
                                           if key and p.step_axis is not None}}


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
    inputs: dict[str, dict] = field(default_factory=dict)  # what each package was fed (``ComponentRun.inputs``)

    def failed(self) -> list[CheckResult]:
        return [r for r in self.results.values() if not r.passed and not r.skipped]

    def record(self, with_series: bool) -> dict:
        """The run as plain data, what the reports are written from (and what crosses from an
        xdist worker): the clip, every check's result and, for the plotted clip, the series."""
        series = {name: np.asarray(values).tolist() for name, values in self.series.items()} if with_series else {}
        return {"clip": self.clip.as_dict(), "results": {key: r.as_dict() for key, r in self.results.items()},
                "series": series}


@dataclass
class TorchReference:
    """The NeMo/Torch side of one clip, computed once: what each package is fed and what Torch
    makes of it."""

    audio: dict[str, np.ndarray]
    mel: dict[str, np.ndarray]  # mel, mel_length
    encoded: dict[str, np.ndarray]  # encoder, encoder_length
    # a transducer's (None for a CTC model):
    decoded_blank: np.ndarray | None  # the decoder's output for the blank start from the zero state
    logits: np.ndarray | None  # the joint on every frame and the blank start
    decision: Decision | None  # the host's decisions on those logits
    path: Transcript | None  # the host's greedy rules on the Torch modules
    margins: list[float] | None  # the smaller top-1/top-2 margin of each of the path's decisions
    # a CTC head's (None without one):
    ctc_logits: np.ndarray | None = None  # raw, on every frame
    ctc_path: Transcript | None = None  # the host's greedy CTC on them

    @property
    def length(self) -> int:
        return int(self.encoded["encoder_length"][0])

    @property
    def joint_inputs(self) -> dict[str, np.ndarray]:
        return {"encoder": self.encoded["encoder"], "decoder": self.decoded_blank}

    def decisions(self) -> dict[str, np.ndarray]:
        return {"token_id": self.decision.token_id, "token_prob": self.decision.token_prob,
                "duration": self.decision.duration}


def torch_reference(wrappers: dict, dims: ModelDims, clip: Clip) -> TorchReference:
    audio = clip.inputs()
    mel = dict(zip(("mel", "mel_length"), run_torch(wrappers["preprocessor"], *audio.values()), strict=True))
    encoded = dict(zip(("encoder", "encoder_length"), run_torch(wrappers["encoder"], *mel.values()), strict=True))
    length = int(encoded["encoder_length"][0])
    transducer = [None] * 5
    if "decoder" in wrappers:
        zeros = zero_state(dims)
        decoded = torch_decoder_step(wrappers["decoder"])(dims.blank_id, zeros, zeros)[0]
        (logits,) = run_torch(wrappers["joint"], encoded["encoder"], decoded)
        # (That the host's rules are NeMo's is proven by the unit tests against ``GreedyTDTInfer``.)
        path, margins = torch_greedy_tdt(wrappers["decoder"], wrappers["joint"], encoded["encoder"], length, dims)
        transducer = [decoded, logits, decision_from_logits(logits, dims), path, margins]
    ctc = {}
    if "ctc_head" in wrappers:  # (the host's CTC rules are NeMo's: the unit tests against its CTC decoding)
        (ctc_logits,) = run_torch(wrappers["ctc_head"], encoded["encoder"])
        ctc = {"ctc_logits": ctc_logits, "ctc_path": greedy_ctc(ctc_logits, length, dims.blank_id)}
    return TorchReference(audio, mel, encoded, *transducer, **ctc)


@dataclass
class ComponentRun:
    """One package run on the reference's inputs, with Torch's outputs for the same inputs."""

    inputs: dict[str, np.ndarray]  # what the package was fed (its first frame, when fed frame by frame)
    reference: dict[str, np.ndarray]
    exported: dict[str, np.ndarray]


class ParityRunner:
    """Runs every check of one model's exports on one backend."""

    def __init__(self, model, dims: ModelDims, packages: dict[str, Path], load: Callable[[Path], object],
                 tolerances: ToleranceTable, backend: str, precision: str,
                 origins: Callable[[str], dict | None] | None = None, symbol_steps: int = SYMBOL_STEPS):
        self.model, self.dims, self.packages, self.precision = model, dims, packages, precision
        self.load, self.tolerances, self.backend = load, tolerances, backend
        self.origins, self.symbol_steps = origins, symbol_steps
        self.wrappers = {name: wrapper(name, model) for name, c in COMPONENTS.items()
                         if c.fits(dims)}

    def predict(self, component: str, inputs: dict) -> dict[str, np.ndarray]:
        return self.load(self.packages[component]).predict(inputs)

    def run(self, clip: Clip) -> ClipParity:
        reference = torch_reference(self.wrappers, self.dims, clip)
        checks = _ClipChecks(self, clip, reference)
        checks.run_all()
        return ClipParity(clip, checks.results, checks.series, {n: r.inputs for n, r in checks.runs.items()})

    # -- how each package runs on the reference's inputs -------------------------------------
    def unpadded_audio(self, name: str, ref: TorchReference) -> dict[str, np.ndarray] | None:
        """The clip without its padding, for a package whose waveform input takes it (a flexible
        input, as the public release has): what an app feeds it. None for a fixed window."""
        spec = next((s for s in self.load(self.packages[name]).input_specs if s.name == "audio_signal"), None)
        length = int(ref.audio["audio_length"][0])
        audio = {"audio_signal": ref.audio["audio_signal"][:, :length], "audio_length": ref.audio["audio_length"]}
        if spec is None or not spec.flexible or not spec.allows(audio["audio_signal"].shape):
            return None
        return audio

    def run_component(self, name: str, ref: TorchReference) -> ComponentRun:
        if name in ("preprocessor", "mel_encoder"):
            padded = ref.mel if name == "preprocessor" else ref.encoded
            audio = self.unpadded_audio(name, ref)
            if audio is None:
                return ComponentRun(ref.audio, padded, self.predict(name, ref.audio))
            # Torch on the same unpadded input
            reference = dict(zip(padded, run_torch(self.wrappers[name], *audio.values()), strict=True))
            return ComponentRun(audio, reference, self.predict(name, audio))
        if name == "encoder":
            return ComponentRun(ref.mel, ref.encoded, self.predict(name, ref.mel))
        if name == "decoder":
            return self.decoder_rollout(ref)
        if name == "joint":
            return ComponentRun(ref.joint_inputs, {"logits": ref.logits}, self.predict(name, ref.joint_inputs))
        if name == "joint_decision":
            return ComponentRun(ref.joint_inputs, ref.decisions(), self.predict(name, ref.joint_inputs))
        if name == "ctc_head":
            inputs = {"encoder_output": ref.encoded["encoder"]}
            return ComponentRun(inputs, {"ctc_logits": ref.ctc_logits}, self.predict(name, inputs))
        if name == "joint_decision_single_step":
            encoder = ref.encoded["encoder"]
            frames = [self.predict(name, {"encoder_step": encoder[:, :, t:t + 1], "decoder_step": ref.decoded_blank})
                      for t in range(self.dims.encoder_frames)]
            first_frame = {"encoder_step": encoder[:, :, :1], "decoder_step": ref.decoded_blank}
            return ComponentRun(first_frame, ref.decisions(), {k: np.concatenate([f[k] for f in frames], axis=1)
                                                               for k in frames[0]})
        raise KeyError(f"no parity run for component {name!r}")

    def rollout_tokens(self, ref: TorchReference) -> list[int]:
        """What the rollout feeds: the blank start, NeMo's transcript of the clip, then seeded
        random tokens, ``symbol_steps`` in all."""
        extra = np.random.default_rng(0).integers(0, self.dims.vocab_size, size=self.symbol_steps).tolist()
        return ([self.dims.blank_id] + list(ref.path.tokens) + extra)[:self.symbol_steps]

    def decoder_rollout(self, ref: TorchReference) -> ComponentRun:
        """``symbol_steps`` decoder steps, each side carrying its own h and c, fed the same tokens;
        outputs stacked along a new first axis, one entry per step."""
        zeros = zero_state(self.dims)
        steps = {"torch": torch_decoder_step(self.wrappers["decoder"]),
                 "exported": package_decoder_step(self.load(self.packages["decoder"]))}
        stacked = {}
        for side, step in steps.items():
            h, c, outputs = zeros, zeros, []
            for token in self.rollout_tokens(ref):
                decoded, h, c = step(token, h, c)
                outputs.append((decoded, h, c))
            stacked[side] = {name: np.stack([o[i] for o in outputs]) for i, name in enumerate(("decoder", "h_out",
                                                                                                 "c_out"))}
        return ComponentRun(decoder_inputs(self.dims.blank_id, zeros, zeros), stacked["torch"], stacked["exported"])

    def non_finite_origin(self, component: str, inputs: dict) -> str:
        """Which op of the package first computes a NaN or an infinity (the mil backend reads its
        intermediates; Core ML's are out of reach)."""
        predictor = self.load(self.packages[component])
        if not hasattr(predictor, "first_non_finite"):
            return f"non-finite output (the {self.backend} backend cannot show where it starts; --backend mil can)"
        try:
            found = predictor.first_non_finite(inputs)
        except Exception as e:  # a diagnostic; never hide the failure it explains
            return f"non-finite output (could not locate: {type(e).__name__}: {e})"
        return f"non-finite output: {found or 'not reproduced on the first input'}"

    def divergences(self, component: str, inputs: dict, reference: np.ndarray,
                    tolerance: Tolerance) -> list[str]:
        """On the mil backend, the first Torch modules whose output departs from the program's."""
        if self.backend != "mil" or self.origins is None or tolerance.exact:
            return []
        origins = self.origins(component)
        if origins is None:
            return ["(not located: the export cache no longer holds this package's op origins)"]
        scale = float(np.max(np.abs(reference))) or 1.0
        # a module counts as diverged past the output's atol, relative to the output's scale, or
        # past the error that alone would breach the PSNR floor: the floor keeps small-valued
        # outputs locatable (an untrained full-size model's token probabilities peak at 3.4e-4,
        # and atol 0.1 over that asked for 294 times a module's own scale)
        threshold = min(tolerance.atol / scale, 10 ** (-self.tolerances.psnr_floor_db / 20))
        order = [s.name for s in COMPONENTS[component].inputs(self.dims)]
        try:
            found = first_divergences(self.load(self.packages[component]), origins,
                                      self.wrappers[component], inputs, order, threshold=threshold)
        except Exception as e:  # the locator is a diagnostic; never hide the failure it explains
            return [f"(could not locate: {type(e).__name__}: {e})"]
        return [str(d) for d in found]


class _ClipChecks:
    """The checks of one clip: every declared output of every package against Torch, then the
    decoder rollout's logits, the decisions, the fused packages and the transcript."""

    def __init__(self, runner: ParityRunner, clip: Clip, reference: TorchReference):
        self.runner, self.clip, self.ref, self.dims = runner, clip, reference, runner.dims
        self.results: dict[str, CheckResult] = {}
        self.series: dict[str, np.ndarray] = {"mel_torch": reference.mel["mel"][0]}
        self.runs: dict[str, ComponentRun] = {}
        self.failures: dict[str, str] = {}  # component -> why its run failed

    def run_all(self) -> None:
        for name in COMPONENTS:
            self.component_outputs(name)
            if name == "decoder":
                self.record(DECODER_ROLLOUT_LOGITS, ("decoder", "joint"), self.rollout_logits)
                if "decisions.joint" not in self.results:  # the rollout did not get as far as deciding
                    rollout = self.results[DECODER_ROLLOUT_LOGITS]
                    self.results["decisions.joint"] = CheckResult("decisions.joint", self.clip.name,
                                                                  skipped=rollout.skipped, error=rollout.error)
        for key, component in DECISION_CHECKS.items():
            if component == "ctc_head":
                self.record(key, (component,), self.ctc_decisions)
            elif component != "joint":
                self.record(key, (component, "joint"), lambda c=component: self.decisions_of(c))
        for key, component in FUSED_CHECKS.items():
            self.record(key, (component, *COMPONENTS[component].fuses), lambda k=key, c=component: self.fused(k, c))
        self.record(TRANSCRIPT_CHECK, DECODE, self.transcript)
        self.record(CTC_TRANSCRIPT_CHECK, CTC_DECODE, self.ctc_transcript)
        self.series.update(self.plotted())

    # -- bookkeeping -------------------------------------------------------------------------
    def record(self, key: str, needs, measure: Callable[[], CheckResult]) -> None:
        """``measure()``'s result under ``key``; skipped when the model's family has no such
        component or a package it needs was not exported, an error when one failed to run or the
        measurement raised."""
        family = self.dims.family
        foreign = [c for c in needs if not COMPONENTS[c].fits(self.dims)]
        if foreign:
            self.results[key] = CheckResult(key, self.clip.name, skipped=(
                f"the model is of the {family.name} family ({family.summary}): it has no {', '.join(foreign)}"))
            return
        absent = [c for c in needs if c not in self.runner.packages]
        failed = [f"{c} failed to run ({self.failures[c]})" for c in needs if c in self.failures]
        if absent:
            self.results[key] = CheckResult(key, self.clip.name, skipped=f"no package: {', '.join(absent)}")
            return
        if failed:
            self.results[key] = CheckResult(key, self.clip.name, error="; ".join(failed))
            return
        try:
            self.results[key] = measure()
        except Exception as e:
            self.results[key] = CheckResult(key, self.clip.name, error=_describe(e))

    def compare(self, key, reference, candidate, component=None, inputs=None) -> CheckResult:
        tolerance = self.runner.tolerances[key]
        comparison = compare(reference, candidate, tolerance)
        result = CheckResult(key, self.clip.name, comparison=comparison)
        if key in STEP_AXES:
            result.l2_per_step = {side: [float(f"{v:.6g}") for v in l2_per_step(values, STEP_AXES[key])]
                                  for side, values in (("reference", reference), ("exported", candidate))}
        if not comparison.match and component is not None:
            result.divergences = self.runner.divergences(component, inputs, reference, tolerance)
            if not np.isfinite(np.asarray(candidate, np.float64)).all():
                result.divergences.insert(0, self.runner.non_finite_origin(component, inputs))
        return result

    def joint_threshold(self) -> float | None:
        """Twice the joint's measured logit error: decisions whose margin is within it may differ."""
        joint = self.results.get("joint.logits")
        return 2 * joint.comparison.max_abs if joint is not None and joint.comparison else None

    # -- the checks --------------------------------------------------------------------------
    def component_outputs(self, name: str) -> None:
        """The package on the reference's inputs; each output that declares a tolerance against Torch."""
        compared = [p for p in COMPONENTS[name].output_ports if p.tolerance]
        if name in self.runner.packages:
            try:
                self.runs[name] = self.runner.run_component(name, self.ref)
            except Exception as e:
                self.failures[name] = _describe(e)
        for port in compared:
            self.record(port.tolerance, (name,), lambda p=port: self.compare(
                p.tolerance, self.runs[name].reference[p.name], self.runs[name].exported[p.name], name,
                self.runs[name].inputs))

    def rollout_logits(self) -> CheckResult:
        """The exported joint on each exported decoder step against the Torch joint on Torch's, and
        the decisions taken from both."""
        rollout = self.runs["decoder"]
        encoder = self.ref.encoded["encoder"]
        torch_logits = np.stack([run_torch(self.runner.wrappers["joint"], encoder, d)[0]
                                 for d in rollout.reference["decoder"]])
        exported_logits = np.stack([self.runner.predict("joint", {"encoder": encoder, "decoder": d})["logits"]
                                    for d in rollout.exported["decoder"]])
        result = self.compare(DECODER_ROLLOUT_LOGITS, torch_logits, exported_logits)
        ref, got = decision_from_logits(torch_logits, self.dims), decision_from_logits(exported_logits, self.dims)
        self.results["decisions.joint"] = CheckResult("decisions.joint", self.clip.name, decisions=decision_agreement(
            ref.token_id, ref.duration, got.token_id, got.duration, ref.token_margin, ref.duration_margin,
            2 * result.comparison.max_abs))
        return result

    def decisions_of(self, component: str) -> CheckResult:
        ref, out = self.ref.decision, self.runs[component].exported
        return CheckResult(f"decisions.{component}", self.clip.name, decisions=decision_agreement(
            ref.token_id, ref.duration, out["token_id"], out["duration"], ref.token_margin, ref.duration_margin,
            self.joint_threshold()))

    def ctc_decisions(self) -> CheckResult:
        """The argmax of the exported CTC logits against Torch's on every valid frame, where
        Torch's top-1/top-2 margin exceeds twice the measured logit error."""
        valid = self.ref.length
        ref, out = self.ref.ctc_logits[0, :valid], self.runs["ctc_head"].exported["ctc_logits"][0, :valid]
        compared = self.results["ctc_head.ctc_logits"].comparison
        none = np.zeros(valid, np.int32)
        return CheckResult("decisions.ctc_head", self.clip.name, decisions=decision_agreement(
            ref.argmax(-1), none, out.argmax(-1), none, top1_margin(ref), np.full(valid, np.inf),
            2 * compared.max_abs if compared else None))

    def fused(self, key: str, component: str) -> CheckResult:
        """The fused package against its exported parts run one after the other."""
        fused = self.runs[component].exported
        if _decides(COMPONENTS[component]):  # the joint's exported logits, decided on the host
            host = decision_from_logits(self.runs["joint"].exported["logits"], self.dims)
            agreement = decision_agreement(host.token_id, host.duration, fused["token_id"], fused["duration"])
            if not agreement.match:
                return CheckResult(key, self.clip.name, decisions=agreement)
            port = next(p for p in COMPONENTS[component].output_ports if p.fused_tolerance)
            return CheckResult(key, self.clip.name, comparison=compare(
                host.token_prob, fused[port.name], self.runner.tolerances[port.fused_tolerance]))
        mel = self.runs["preprocessor"].exported
        frames = self.dims.mel_frames  # a flexible preprocessor's mel, padded to the encoder's window
        padded = np.zeros(mel["mel"].shape[:-1] + (frames,), mel["mel"].dtype)
        padded[..., :min(frames, mel["mel"].shape[-1])] = mel["mel"][..., :frames]
        separate = self.runner.predict("encoder", {"mel": padded, "mel_length": mel["mel_length"]})
        if not np.array_equal(separate["encoder_length"], fused["encoder_length"]):
            return CheckResult(key, self.clip.name, error=(
                f"encoder_length {fused['encoder_length'].tolist()} from the fused package, "
                f"{separate['encoder_length'].tolist()} from preprocessor then encoder"))
        port = next(p for p in COMPONENTS[component].output_ports if p.fused_tolerance == key)
        if separate[port.name].shape != fused[port.name].shape:  # one side unpadded: its valid frames
            valid = int(fused["encoder_length"][0])
            return self.compare(key, separate[port.name][..., :valid], fused[port.name][..., :valid])
        return self.compare(key, separate[port.name], fused[port.name])

    def transcript(self) -> CheckResult:
        runner, dims, model, ref = self.runner, self.dims, self.runner.model, self.ref
        encoder = self.runs["mel_encoder"].exported["encoder"]
        host = greedy_tdt(encoder, ref.length, dims, package_decoder_step(runner.load(runner.packages["decoder"])),
                          package_decide(runner.load(runner.packages["joint_decision_single_step"])))
        nemo = nemo_greedy_tdt(model, ref.encoded["encoder"], ref.length, dims)
        return self.transcript_check(TRANSCRIPT_CHECK, nemo, host, ref.path, ref.margins, self.joint_threshold())

    def ctc_transcript(self) -> CheckResult:
        """Greedy CTC on the exported mel_encoder and CTC head against NeMo's CTC decoding of the
        Torch encoding; the decisions are frames, their margins the Torch logits'."""
        ref = self.ref
        encoder = self.runs["mel_encoder"].exported["encoder"]
        logits = self.runner.predict("ctc_head", {"encoder_output": encoder})["ctc_logits"]
        host = greedy_ctc(logits, ref.length, self.dims.blank_id)
        nemo = nemo_greedy_ctc(self.runner.model, ref.encoded["encoder"], ref.length)
        compared = self.results.get("ctc_head.ctc_logits")
        threshold = 2 * compared.comparison.max_abs if compared is not None and compared.comparison else None
        margins = top1_margin(ref.ctc_logits[0, :ref.length]).tolist()
        return self.transcript_check(CTC_TRANSCRIPT_CHECK, nemo, host, ref.ctc_path, margins, threshold)

    def transcript_check(self, key: str, nemo: Transcript, host: Transcript, path: Transcript, margins: list[float],
                         threshold: float | None) -> CheckResult:
        """The host's transcript on the packages against NeMo's: equal up to NeMo's first
        ambiguous decision (one whose margin on the Torch path is within ``threshold``), all of it
        for fp32 on a confident model."""
        model, threshold = self.runner.model, threshold or 0.0
        # NeMo's tokens before the first decision whose margin is within the measured logit error
        ambiguous = next((i for i, m in enumerate(margins) if m <= threshold), len(margins))
        decisive_tokens = sum(1 for d in path.emitted_at if d < ambiguous)
        median_prob = statistics.median(path.token_probs) if path.token_probs else 0.0
        confident = median_prob > CONFIDENT_MEDIAN_PROB
        exact_required = confident and self.runner.precision == "float32"

        def text(t: Transcript) -> str:
            return model.tokenizer.ids_to_text(t.tokens) if t.tokens else ""

        check = TranscriptCheck(
            reference=nemo, exported=host, reference_text=text(nemo), exported_text=text(host),
            edit_distance=token_edit_distance(nemo.tokens, host.tokens), decisive_tokens=decisive_tokens,
            required_tokens=max(len(nemo.tokens), len(host.tokens)) if exact_required else decisive_tokens,
            confident=confident, median_token_prob=median_prob)
        return CheckResult(key, self.clip.name, transcript=check)

    def plotted(self) -> dict[str, np.ndarray]:
        """What the plots draw besides the L2 per step: the mel, the joint's logits on frame 0's
        decoder state and the decisions, the CTC head's decision per frame, Torch's and (where
        they ran) the exported ones."""
        series = {}
        if self.ref.logits is not None:
            series.update(joint_logits_torch=self.ref.logits[0, :, 0],
                          decision_token_torch=self.ref.decision.token_id.ravel(),
                          decision_prob_torch=self.ref.decision.token_prob.ravel())
        if "preprocessor" in self.runs:  # Torch's mel on what the package was fed (unpadded, if flexible)
            series["mel_torch"] = self.runs["preprocessor"].reference["mel"][0]
            series["mel_exported"] = self.runs["preprocessor"].exported["mel"][0]
        if "joint" in self.runs:
            series["joint_logits_exported"] = self.runs["joint"].exported["logits"][0, :, 0]
        valid = self.ref.length
        if self.ref.ctc_logits is not None:  # the greedy CTC decision of every valid frame
            series["ctc_token_torch"] = self.ref.ctc_logits[0, :valid].argmax(-1)
            if "ctc_head" in self.runs:
                series["ctc_token_exported"] = self.runs["ctc_head"].exported["ctc_logits"][0, :valid].argmax(-1)
        if "joint_decision" in self.runs:
            out = self.runs["joint_decision"].exported
            series.update(decision_token_exported=out["token_id"].ravel(),
                          decision_prob_exported=out["token_prob"].ravel())
        return series


def _describe(error: Exception) -> str:
    """An exception as a check's error: its type, message and the line that raised it."""
    frame = traceback.extract_tb(error.__traceback__)[-1]
    return f"{type(error).__name__}: {error} (at {Path(frame.filename).name}:{frame.lineno})"

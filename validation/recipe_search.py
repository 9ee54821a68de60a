"""The recipe search: the smallest mixed variant that passes the gates, found from the
sensitivity profiles of the schemes it may use (``validation.sensitivity``).

Schemes are tried from the mildest (most bits per weight) to the most aggressive. At each, the
groups still at a milder scheme are ordered by what a megabyte saved costs (the headline quality
the profile measured for the group compressed alone, over the bytes it saves) and the cheapest
are moved first: the longest prefix of that order whose whole model passes the gates is found by
bisection, each try a real variant built and checked end to end. The group where the prefix
broke is backed off (it keeps its milder scheme, and is not tried at any harsher one) and the
groups after it are tried again. Every try is kept: the report's size/quality Pareto front is
drawn from them.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from exporters.components import DEPLOYMENT_TARGETS
from exporters.quantize import Step, Variant, is_front_end
from infra.errors import UserError

SEARCHED = "searched"  # the recipe a search finds, a variant of the sweep like the others
RECIPE_FILE = "recipe.json"  # beside the summary: what ``--variant FILE`` reads back
MAX_TRIES = 24  # whole-model checks a search may make
# the components each group's weights are in (the encoder's are the mel_encoder's)
_ENCODERS = ("encoder", "mel_encoder")
_JOINTS = ("joint", "joint_decision", "joint_decision_single_step")


def components_of(group: str) -> tuple[str, ...]:
    if group.startswith("decoder "):
        return ("decoder",)
    return _JOINTS if group == "joint" else _ENCODERS


def bits_per_weight(step: Step) -> float:
    """What one weight costs in a package compressed by ``step`` (the tables and scales aside):
    how a search orders its schemes and weighs what a group saves."""
    options = dict(step.options)
    if step.kind == "palettize":
        return float(options.get("nbits", 8))
    if step.kind == "linear":
        return 4.0 if str(options.get("dtype", "int8")) in ("int4", "uint4") else 8.0
    return 16.0 * (1.0 - float(options.get("target_sparsity", 0.5))) + 1.0  # pruned: the kept values, a mask bit


FP16_BITS = 16.0


def scheme_bits(scheme: Variant) -> float:
    """A scheme's bits per encoder weight, where most of a model's weights are."""
    steps = scheme.steps_for("mel_encoder") or scheme.steps_for("encoder")
    return bits_per_weight(steps[0]) if steps else FP16_BITS


def check_schemes(schemes: list[Variant]) -> None:
    """A scheme a search mixes compresses each component in one step (joint compression of one
    group cannot be mixed with its neighbours') and its encoder at all."""
    for scheme in schemes:
        joint = [c for c, steps in scheme.steps.items() if len(steps) > 1]
        if joint or scheme.groups:
            why = f"{', '.join(joint)} in {len(scheme.steps[joint[0]])} steps" if joint else "it is a recipe already"
            raise UserError(f"--search {scheme.name}: a scheme is mixed group by group, and {why}; choose variants "
                            "of one step per component (e.g. palettize_6bit, palettize_4bit, int8_per_channel)")
        if not (scheme.steps_for("mel_encoder") or scheme.steps_for("encoder")):
            raise UserError(f"--search {scheme.name}: it leaves the encoder as exported; a search needs schemes that "
                            "compress it")


def recipe_variant(name: str, schemes: dict[str, Variant], assignment: dict[str, str | None],
                   components: list[str]) -> Variant:
    """The variant that compresses each group by its assigned scheme's step for the group's
    component (``None``: as exported), for the ``components`` exported."""
    used = [schemes[s] for s in assignment.values() if s is not None]
    target = max((s.minimum_deployment_target for s in used), key=DEPLOYMENT_TARGETS.index, default="iOS17")
    groups: dict[str, dict[str, tuple[Step, ...]]] = {}
    for group, scheme in sorted(assignment.items()):
        for component in components_of(group):
            if component in components and not is_front_end(component):
                groups.setdefault(component, {})[group] = schemes[scheme].steps_for(component) if scheme else ()
    moved = {s: sum(1 for v in assignment.values() if v == s) for s in schemes}
    summary = "searched recipe: " + ", ".join(f"{count} group(s) {s}" for s, count in moved.items() if count) \
        + f", {sum(v is None for v in assignment.values())} as exported"
    return Variant(name, summary, {}, target, True, groups)


@dataclass
class Try:
    """One whole-model check of a search: the assignment, what it weighs and what it fails."""

    name: str
    assignment: dict[str, str | None]
    size_bytes: int  # the encoder, decoder and joint packages, one of each
    encoder_size_bytes: int
    base_encoder_size_bytes: int
    quality: float  # the lowest headline quality of its components
    wer: float | None  # on the held-out set, where evaluated
    flips: int | None
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def as_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed,
                "encoder_fraction": self.encoder_size_bytes / self.base_encoder_size_bytes}


def weighed_size(components: dict) -> int:
    """What a variant's weights cost an app: its encoder, decoder and joint packages, one of
    each (the mel_encoder holds the encoder's weights again, the joint decisions the joint's)."""
    weighed = [next(c for c in kinds if c in components) for kinds in (_ENCODERS, ("decoder",), _JOINTS)
               if any(c in components for c in kinds)]
    return sum(components[c]["size_bytes"] for c in weighed)


def try_of(name: str, assignment: dict, entry: dict, failures: list[str]) -> Try:
    """A try from the summary entry of its variant (``VariantResult.as_dict``)."""
    components = entry["components"]
    encoder = next(c for c in ("encoder", "mel_encoder") if c in components)
    held_out = entry.get("held_out") or {}
    flips = held_out.get("flips")
    return Try(name, dict(assignment), weighed_size(components),
               components[encoder]["size_bytes"], components[encoder]["base_size_bytes"],
               min(c["quality"] for c in components.values()), held_out.get("wer"),
               flips["words"] if flips else None, list(failures))


def pareto_front(tries: list[dict], quality_key: str) -> list[str]:
    """The names of the tries no other beats on both size and ``quality_key`` (a loss: lower is
    better), smallest first."""
    points = sorted((t for t in tries if t.get(quality_key) is not None),
                    key=lambda t: (t["size_bytes"], t[quality_key]))
    front, best = [], float("inf")
    for point in points:
        if point[quality_key] < best:
            front.append(point["name"])
            best = point[quality_key]
    return front


class _OutOfTries(Exception):
    pass


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


@dataclass
class Search:
    schemes: list[str]
    gates: dict
    tries: list[Try] = field(default_factory=list)
    chosen: str | None = None  # the smallest try that passed
    backed_off: list[dict] = field(default_factory=list)  # group, the scheme it failed at
    seconds: float = 0.0
    exhausted: bool = False  # stopped at MAX_TRIES
    stopped: str | None = None  # why it ended before trying every scheme

    def closest(self) -> Try | None:
        """With nothing passing: the try that missed the fewest gates, the smallest of those."""
        return min(self.tries, key=lambda t: (len(t.failures), t.size_bytes), default=None)

    def as_dict(self) -> dict:
        tries = [t.as_dict() for t in self.tries]
        for t in tries:
            t["loss"] = 1.0 - t["quality"]
        closest = self.closest() if self.chosen is None else None
        return {"schemes": self.schemes, "gates": self.gates, "tries": tries, "chosen": self.chosen,
                "variant": SEARCHED if self.chosen else None, "backed_off": self.backed_off,
                "closest": closest.as_dict() if closest else None, "seconds": round(self.seconds, 1),
                "exhausted": self.exhausted, "stopped": self.stopped, "max_tries": MAX_TRIES,
                "front": {"wer": pareto_front([t for t in tries if t["wer"] is not None], "wer"),
                          "quality": pareto_front(tries, "loss")}}


def search_recipe(schemes: list[Variant], profiles: dict[str, list[dict]], components: list[str],
                  check: Callable[[Variant, dict], Try], gates: dict, report: Callable[[str], None] = lambda line: None,
                  max_tries: int = MAX_TRIES) -> tuple[Search, Variant | None]:
    """The smallest recipe of ``schemes`` (their ``profiles``: each group compressed alone) whose
    whole model ``check`` passes; ``check(variant, assignment)`` builds it and weighs it against the
    gates. Returns the search and the recipe (``None`` where nothing passed)."""
    start = time.perf_counter()
    by_name = {s.name: s for s in schemes}
    parameters = {row["group"]: row["parameters"] for rows in profiles.values() for row in rows}
    assignment: dict[str, str | None] = dict.fromkeys(sorted(parameters))
    search = Search([s.name for s in schemes], gates)
    variants: dict[str, Variant] = {}
    fragile: set[str] = set()

    def bits(group: str) -> float:
        return scheme_bits(by_name[assignment[group]]) if assignment[group] else FP16_BITS

    def passes(moved: list[str], scheme: str) -> bool:
        if len(search.tries) >= max_tries:
            raise _OutOfTries
        candidate = {**assignment, **dict.fromkeys(moved, scheme)}
        name = f"{SEARCHED}_{len(search.tries) + 1:02d}"
        variants[name] = recipe_variant(name, by_name, candidate, components)
        found = check(variants[name], candidate)
        search.tries.append(found)
        left = max_tries - len(search.tries)
        pace = (time.perf_counter() - start) / len(search.tries)
        report(f"try {len(search.tries)}: {sum(s == scheme for s in candidate.values())} group(s) at {scheme} "
               f"({len(moved)} of them new), encoder "
               f"{100 * found.encoder_size_bytes / found.base_encoder_size_bytes:.0f}% of fp16: "
               + ("passed" if found.passed else f"failed ({found.failures[0]})")
               + f"; at most {left} more tries, {_duration(pace * left)} at this pace")
        return found.passed

    try:
        for scheme in sorted(schemes, key=scheme_bits, reverse=True):
            cost = {row["group"]: max(1.0 - row["quality"], 1e-12) for row in profiles[scheme.name]}
            target = scheme_bits(scheme)
            candidates = sorted((g for g in cost if g not in fragile and bits(g) > target),
                                key=lambda g: cost[g] / (parameters[g] * (bits(g) - target)))
            while candidates:
                if passes(candidates, scheme.name):
                    kept = len(candidates)
                else:  # the longest prefix that passes: more than ``low`` groups fail, ``high`` do
                    low, high = 0, len(candidates)
                    while high - low > 1:
                        middle = (low + high) // 2
                        low, high = (middle, high) if passes(candidates[:middle], scheme.name) else (low, middle)
                    kept = low
                assignment.update(dict.fromkeys(candidates[:kept], scheme.name))
                if kept == len(candidates):
                    break
                if not any(t.passed for t in search.tries):  # even the cheapest group alone fails
                    search.stopped = (f"not even the cheapest group ({candidates[0]}) alone passes at {scheme.name}, "
                                      "the mildest scheme: no recipe of these schemes can meet these gates")
                    report(search.stopped)
                    raise _OutOfTries
                fragile.add(candidates[kept])
                search.backed_off.append({"group": candidates[kept], "scheme": scheme.name,
                                          "kept_at": assignment[candidates[kept]] or "as exported"})
                candidates = candidates[kept + 1:]
    except _OutOfTries:
        if search.stopped is None:
            search.exhausted = True
            report(f"stopped after {max_tries} tries (the search's limit); the smallest that passed is kept")
    search.seconds = time.perf_counter() - start
    passed = [t for t in search.tries if t.passed]
    if not passed:
        return search, None
    best = min(passed, key=lambda t: t.size_bytes)
    search.chosen = best.name
    return search, dataclasses.replace(variants[best.name], name=SEARCHED)

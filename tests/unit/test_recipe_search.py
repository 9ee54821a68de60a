"""The recipe search on a model whose verdicts are known: which groups break at which scheme is
set here, and the smallest passing recipe is found by trying every assignment."""

from __future__ import annotations

import itertools

import pytest

from exporters.quantize import PALETTE, VARIANTS, Step, Variant
from infra.errors import UserError
from validation.recipe_search import (
    SEARCHED,
    Try,
    check_schemes,
    components_of,
    pareto_front,
    recipe_variant,
    search_recipe,
)

SCHEMES = [VARIANTS["palettize_8bit"], VARIANTS["palettize_4bit"]]
BITS = {None: 16, "palettize_8bit": 8, "palettize_4bit": 4}
PARAMETERS = {"subsampling": 4000, "layer 00 attention": 9000, "layer 00 feed-forward": 30000,
              "layer 01 attention": 9000, "layer 01 feed-forward": 30000, "joint": 6000}
COMPONENTS = ["encoder", "mel_encoder", "decoder", "joint_decision"]


def _profiles(quality: dict[str, float]) -> dict[str, list[dict]]:
    """Each scheme's profile: the group's quality, lower at 4 bits."""
    return {s.name: [{"group": g, "parameters": p, "quality": quality[g] - (0.0 if s.name.endswith("8bit") else 0.01)}
                     for g, p in PARAMETERS.items()] for s in SCHEMES}


def _size(assignment) -> int:
    return sum(PARAMETERS[g] * BITS[s] // 8 for g, s in assignment.items())


def _checker(breaks: dict[str, str], calls: list):
    """A whole-model check that fails where a group sits at a scheme as harsh as the one it breaks at."""
    def check(variant: Variant, assignment: dict) -> Try:
        calls.append(variant)
        failures = [f"{g} at {s}" for g, s in assignment.items() if s and g in breaks and BITS[s] <= BITS[breaks[g]]]
        size = _size(assignment)
        return Try(variant.name, assignment, size, size, _size(dict.fromkeys(PARAMETERS)), 1.0, None, None, failures)
    return check


@pytest.mark.parametrize("breaks", [
    {},
    {"layer 01 feed-forward": "palettize_4bit"},
    {"joint": "palettize_4bit", "subsampling": "palettize_8bit"},
    {"layer 00 attention": "palettize_4bit", "layer 01 attention": "palettize_4bit", "joint": "palettize_4bit"},
])
def test_the_search_finds_the_smallest_recipe_that_passes(breaks):
    calls = []
    quality = {g: 0.999 - 0.001 * i for i, g in enumerate(PARAMETERS)}
    search, recipe = search_recipe(SCHEMES, _profiles(quality), COMPONENTS, _checker(breaks, calls), {})
    every = [dict(zip(PARAMETERS, choice, strict=True)) for choice in itertools.product(BITS, repeat=len(PARAMETERS))]
    passing = [a for a in every if not any(s and g in breaks and BITS[s] <= BITS[breaks[g]] for g, s in a.items())]
    smallest = min(_size(a) for a in passing)
    chosen = next(t for t in search.tries if t.name == search.chosen)
    assert chosen.passed and chosen.size_bytes == smallest
    assert recipe.name == SEARCHED and recipe.groups == recipe_variant(SEARCHED, {s.name: s for s in SCHEMES},
                                                                       chosen.assignment, COMPONENTS).groups
    assert {b["group"] for b in search.backed_off} == set(breaks)
    assert len(calls) == len(search.tries) <= 2 + 4 * len(breaks) + 1


def test_the_cheapest_megabytes_move_first():
    """After the uniform 8-bit try (passes) and the uniform 4-bit one (fails: the joint breaks),
    the bisection's first half holds the three groups whose bytes cost least: a point of quality
    lost over the bytes 4 bits save, so the large feed-forwards first, the one that barely moves
    before the other, then an attention."""
    quality = dict.fromkeys(PARAMETERS, 0.99) | {"layer 00 feed-forward": 0.9999}
    calls = []
    search_recipe(SCHEMES, _profiles(quality), COMPONENTS, _checker({"joint": "palettize_4bit"}, calls), {},
                  max_tries=3)
    at_4_bits = {g for g, steps in calls[2].groups["encoder"].items() if steps == (PALETTE[4],)}
    assert at_4_bits == {"layer 00 feed-forward", "layer 01 feed-forward", "layer 00 attention"}
    assert calls[2].groups["joint_decision"]["joint"] == (PALETTE[8],)


def test_when_nothing_passes_the_closest_try_is_reported():
    calls = []
    breaks = dict.fromkeys(PARAMETERS, "palettize_8bit")
    search, recipe = search_recipe(SCHEMES, _profiles(dict.fromkeys(PARAMETERS, 0.99)), COMPONENTS,
                                   _checker(breaks, calls), {})
    assert recipe is None and search.chosen is None
    # all six groups at 8 bits, then the cheapest three, then the cheapest alone: no more
    assert "not even the cheapest group" in search.stopped and len(calls) == 3 and not search.exhausted
    summary = search.as_dict()
    assert summary["variant"] is None and len(summary["closest"]["failures"]) == 1  # one group moved, one failure


def test_a_search_stops_at_its_limit_and_keeps_the_smallest_that_passed():
    calls = []
    search, recipe = search_recipe(SCHEMES, _profiles(dict.fromkeys(PARAMETERS, 0.99)), COMPONENTS,
                                   _checker({"joint": "palettize_4bit"}, calls), {}, max_tries=3)
    assert search.exhausted and len(calls) == 3
    assert recipe is not None and search.chosen == min((t for t in search.tries if t.passed),
                                                       key=lambda t: t.size_bytes).name


def test_the_pareto_front_keeps_what_nothing_beats():
    tries = [{"name": "a", "size_bytes": 10, "wer": 0.05}, {"name": "b", "size_bytes": 20, "wer": 0.02},
             {"name": "c", "size_bytes": 30, "wer": 0.03}, {"name": "d", "size_bytes": 5, "wer": 0.09},
             {"name": "e", "size_bytes": 20, "wer": 0.04}, {"name": "f", "size_bytes": 40, "wer": None}]
    assert pareto_front(tries, "wer") == ["d", "a", "b"]


def test_a_group_belongs_to_the_components_that_hold_its_weights():
    assert components_of("layer 03 attention") == ("encoder", "mel_encoder")
    assert components_of("decoder embedding") == ("decoder",)
    assert "joint_decision_single_step" in components_of("joint")


@pytest.mark.parametrize("scheme, message", [
    (VARIANTS["pruned_int8"], "in 2 steps"),
    (Variant("joint_only", "x", {"joint": (Step.of("linear"),)}), "leaves the encoder as exported"),
])
def test_schemes_a_search_cannot_mix_are_refused(scheme, message):
    with pytest.raises(UserError, match=message):
        check_schemes([scheme])

"""What compressing one group of weights costs with everything else left as exported: the
per-layer sensitivity profile a mixed recipe is built from (whisperkittools profiles its
palettization the same way, a layer at a time).

A variant's compressed package of a component already holds every weight compressed. The
executor swaps one group's weights for their compressed values in the uncompressed program
(``MILModel.weights_in``, ``MILModel.constants_replaced``), so a profile costs the one
compression the sweep made anyway and one run per group, not a package per group. The swapped
values are those the package's constexpr ops decompress to, exactly, so each row is what a
package with only that group compressed gives on the executor.

Groups follow the op origins of the export (the Torch module each op came from): the encoder's
subsampling, then each layer's attention, feed-forward (both halves) and convolution; the
decoder's embedding and LSTM; the joint; any other compressed weight in a group named by its
module. Weights under ``WEIGHT_THRESHOLD`` (norms, biases) are not compressed by any variant.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict, dataclass

import numpy as np

from exporters.components import COMPONENTS, ModelDims
from exporters.quantize import group_of
from runtimes.mil import MILModel
from validation.audio import Clip
from validation.evaluation import decode_encoded
from validation.metrics import psnr_db, quality, token_edit_distance
from validation.quantization import QuantizationSweep, reference_of

# the components a profile swaps weights in: those the app decodes with (the encoder's weights
# are the mel_encoder's) and the joint, whose logits show what the single-step joint's decisions
# hide. A group's quality is that of the contract's headline output of the first of these that
# holds it.
PROFILED = ("mel_encoder", "decoder", "joint", "joint_decision_single_step")
ENCODING = "mel_encoder"  # what the clip's transcript is decoded from
def _model_order(group: str, components: dict) -> tuple:
    """Groups in the order the audio meets them: the subsampling, the layers, then the decoder and
    the joint."""
    first = min(PROFILED.index(name) for name in components)
    return first, group != "subsampling", group


@dataclass
class GroupCost:
    component: str
    group: str
    weights: int  # the compressed weight tensors in it
    parameters: int  # their values
    quality: float  # of the component's headline output, 1 - ||ref - q|| / ||ref||
    psnr_db: float
    token_error_rate: float | None  # the clip's greedy transcript against the uncompressed export's
    # on the held-out set (``on_set``): the WER's change against the uncompressed export's, in
    # points, and the words changed
    wer_difference_points: float | None = None
    flips: int | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def sensitivity_profile(base: dict, compressed: dict, origins: dict[str, dict[str, str]], dims: ModelDims,
                        clip: Clip, progress: Callable = lambda items, total: items,
                        on_set: Callable[[Callable], dict] | None = None) -> list[GroupCost]:
    """One row per group: the cost of compressing that group alone, as ``compressed`` (component
    -> the variant's package) compresses it, all else as ``base`` (component -> the uncompressed
    package). ``origins``: component -> op output -> Torch module. ``on_set(load)``: the held-out
    entry (``held_out_entry``) of the base packages loaded by ``load`` (which hands out the swapped
    programs), per group."""
    models = {name: MILModel(package) for name, package in base.items()}
    by_path = {base[name]: model for name, model in models.items()}
    # the reference on the same executors the groups run on (the sweep's may be Core ML's, whose
    # rounding would show in every row as if compression had moved it)
    reference = reference_of(base, lambda package: by_path[package], dims, clip)
    groups: dict[str, dict[str, dict[str, np.ndarray]]] = {}  # group -> component -> constant -> value
    for name in [n for n in PROFILED if n in compressed and n in base]:
        for reader, constant, value in models[name].weights_in(MILModel(compressed[name])):
            group = group_of(name, origins[name].get(reader, ""))
            groups.setdefault(group, {}).setdefault(name, {})[constant] = value
    rows = []
    for group in progress(sorted(groups, key=lambda g: _model_order(g, groups[g])), len(groups)):
        swaps = groups[group]
        component = next(name for name in PROFILED if name in swaps)
        headline = COMPONENTS[component].headline
        with ExitStack() as swapped:
            for name, weights in swaps.items():
                swapped.enter_context(models[name].constants_replaced(weights))
            outputs = models[component].predict(reference.inputs[component])
            output = outputs[headline]
            # the clip's transcript from the encoding already made (the base one where the
            # mel_encoder keeps its weights): one encoder run per group, not two
            encoded = outputs if component == ENCODING else reference.outputs[ENCODING]
            tokens = decode_encoded(encoded, base, lambda package: by_path[package], dims).tokens \
                if reference.tokens is not None else None
            on = on_set(lambda package: by_path[package]) if on_set is not None else None
        expected = np.asarray(reference.outputs[component][headline], np.float64)
        weights = swaps[component]
        rows.append(GroupCost(
            component, group, len(weights), sum(int(np.size(value)) for value in weights.values()),
            quality(expected, output), psnr_db(expected, np.asarray(output, np.float64)),
            token_edit_distance(reference.tokens, tokens) / max(len(reference.tokens), 1) if tokens is not None
            else None, *_on_set_costs(on)))
    return rows


def _on_set_costs(entry: dict | None) -> tuple[float | None, int | None]:
    if not entry or entry.get("wer_uncompressed") is None:
        return None, None
    return 100 * (entry["wer"] - entry["wer_uncompressed"]), entry["flips"]["words"]


def profile_variant(sweep: QuantizationSweep, name: str, progress: Callable = lambda items, total: items,
                    on_set: Callable[[Callable], dict] | None = None) -> list[dict]:
    """Variant ``name`` of the sweep profiled group by group against the uncompressed exports it
    was built from (with ``on_set``, on the held-out set too: ``sensitivity_profile``); kept in its
    result (``VariantResult.sensitivity``)."""
    result = sweep(name)
    sweep.load.release()  # the profile loads its own executors: the sweep's would only crowd them
    exports, _ = sweep.bases[sweep.table[name].minimum_deployment_target]  # this tool's: they record op origins
    rows = sensitivity_profile({n: e.package for n, e in exports.items() if n in PROFILED}, result.packages,
                               {n: e.op_origins() for n, e in exports.items() if n in PROFILED}, sweep.dims,
                               sweep.clip, progress, on_set)
    result.sensitivity = [row.as_dict() for row in rows]
    return result.sensitivity

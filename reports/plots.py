"""Every plot the reports draw: parity (from the series a ``ClipParity`` keeps), latency,
quantization and data-set evaluation.

Each figure's title names what it shows and the model (by its file or preset name); a footer
line says how it was measured (backend, precision, host, versions), so a PNG read on its own
says what it is.
"""

from __future__ import annotations

import os
import platform
import textwrap
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

from exporters.components import COMPONENTS
from validation.neural_engine import CPU, NEURAL_ENGINE, NO_COMPUTE, UNKNOWN, Placement
from validation.recipe_search import SEARCHED, weighed_size

PARITY_DIR = Path("plots") / "compare-components"
RANGE_DIR = Path("plots") / "fp16-range"
TOP_K = 10


@dataclass(frozen=True)
class Caption:
    """What a figure says about itself beyond its subject."""

    model: str  # as ``Exporter.metadata`` describes it: preset:NAME, hub:ID or a .nemo path
    measured: str  # backend, precision, compute units: what the numbers were measured with
    packages: dict | None = None  # a package set's provenance (``validation.packages``): not exported here

    @classmethod
    def of(cls, description: dict, measured: str) -> Caption:
        """The caption of a report written from ``description`` (a metadata.json document)."""
        return cls(description["model"], measured, description.get("packages"))

    @property
    def subject_suffix(self) -> str:
        """The model, and whose packages were measured when this tool did not export them."""
        if self.packages is None:
            return self.model_name
        folder = Path(self.packages["directory"]).name if self.packages.get("directory") else "--component"
        return f"{self.model_name}, packages from {folder}/ (not exported here)"

    @property
    def model_name(self) -> str:
        """The preset, hub id or checkpoint file name, never the directory it sits in."""
        kind, sep, value = self.model.partition(":")
        if sep and kind in ("preset", "hub"):
            return f"{value} ({kind})"
        return Path(self.model).name

    def footer(self) -> str:
        versions = []
        for package in ("torch", "coremltools", "nemo_toolkit", "numpy"):
            try:
                versions.append(f"{package} {version(package)}")
            except PackageNotFoundError:
                continue
        host = f"{platform.system()} {platform.release()} {platform.machine()}, {os.cpu_count()} CPUs"
        return " · ".join([self.measured, host, ", ".join(versions)])


def _figure(rows: int, height: float = 2.6, width: float = 11.0):
    import matplotlib  # lazy: pyplot fixes its backend when imported: Agg is chosen only when drawing

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: as above

    fig, axes = plt.subplots(rows, 1, figsize=(width, 1.2 + height * rows), squeeze=False)
    return plt, fig, axes[:, 0]


def _save(plt, fig, caption: Caption, subject: str, path: Path, right: float = 1.0) -> Path:
    """Title (subject and model), footer (how it was measured), then the file; ``right`` keeps
    the figure's right edge free for a figure legend."""
    fig.suptitle("\n".join(textwrap.wrap(f"{subject} — {caption.subject_suffix}", 100)), fontsize=10)
    footer = textwrap.wrap(caption.footer(), int(170 * fig.get_size_inches()[0] / 11))  # 170 characters on 11 in
    fig.text(0.01, 0.005, "\n".join(footer), fontsize=6.5, color="dimgray", ha="left", va="bottom")
    inches = fig.get_size_inches()[1]
    fig.tight_layout(rect=(0, (0.05 + 0.13 * len(footer)) / inches, right, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _torch_vs_exported(ax, torch_values, exported: dict, ylabel: str, xlabel: str) -> None:
    ax.plot(torch_values, label="Torch (NeMo)", color="black", linewidth=1.6)
    for (name, values), style in zip(exported.items(), ("--", ":"), strict=False):  # one or two exports
        ax.plot(values, style, label=name, linewidth=1.2)
    ax.set_ylabel(ylabel)
    ax.set_xlabel(xlabel)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)  # beside the panel: no frame hidden


def _delta(ax, torch_values, exported: dict, xlabel: str, references: dict | None = None) -> None:
    """Each exported series minus Torch's (``references[name]`` where a package had its own)."""
    for name, values in exported.items():
        reference = (references or {}).get(name, torch_values)
        ax.plot(np.asarray(values) - np.asarray(reference), label=f"{name} − Torch", linewidth=1.0)
    ax.axhline(0.0, color="grey", linewidth=0.6)
    ax.set_ylabel("Δ L2")
    ax.set_xlabel(xlabel)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)


def mel_composite(series: dict, caption: Caption, out_dir: Path) -> Path:
    plt, fig, (a, b, d) = _figure(3)
    torch_mel, exported_mel = series["mel_torch"], series["mel_exported"]
    limits = dict(vmin=float(torch_mel.min()), vmax=float(torch_mel.max()))
    for ax, values, name in ((a, torch_mel, "Torch mel"), (b, exported_mel, "exported mel")):
        image = ax.imshow(values, aspect="auto", origin="lower", cmap="magma", **limits)
        ax.set_title(name, fontsize=9)
        ax.set_ylabel("mel bin")
        fig.colorbar(image, ax=ax, pad=0.01)
    difference = exported_mel - torch_mel
    bound = float(np.abs(difference).max()) or 1e-12
    image = d.imshow(difference, aspect="auto", origin="lower", cmap="coolwarm", vmin=-bound, vmax=bound)
    d.set_title(f"exported − Torch (max |Δ| {bound:.3g})", fontsize=9)
    d.set_ylabel("mel bin")
    d.set_xlabel("frame (10 ms)")
    fig.colorbar(image, ax=d, pad=0.01)
    return _save(plt, fig, caption, "Mel spectrogram", out_dir / "mel_composite.png")


def encoder_l2(series: dict, caption: Caption, out_dir: Path) -> Path:
    exported = {name: series[key] for name, key in (("encoder", "encoder_l2_exported"),
                                                    ("mel_encoder", "mel_encoder_l2_exported")) if key in series}
    references = {name: series[key] for name, key in (("encoder", "encoder_l2_torch"),
                                                      ("mel_encoder", "mel_encoder_l2_torch")) if key in series}
    reference = references.get("encoder", references.get("mel_encoder"))
    plt, fig, (top, bottom) = _figure(2)
    _torch_vs_exported(top, reference, exported, "L2 over channels", "encoder frame (80 ms)")
    _delta(bottom, reference, exported, "encoder frame (80 ms)", references)
    return _save(plt, fig, caption, "Encoder and mel_encoder output L2 per frame", out_dir / "encoder_l2.png")


def decoder_steps(series: dict, caption: Caption, out_dir: Path) -> Path:
    exported = {"decoder": series["decoder_l2_exported"]}
    plt, fig, (top, bottom) = _figure(2)
    _torch_vs_exported(top, series["decoder_l2_torch"], exported, "L2 of decoder output", "symbol step")
    _delta(bottom, series["decoder_l2_torch"], exported, "symbol step")
    return _save(plt, fig, caption, "Decoder rolled out over symbol steps (h, c carried)",
                 out_dir / "decoder_steps.png")


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(shifted.astype(np.float64))
    return e / e.sum(axis=-1, keepdims=True)


def joint_topk(series: dict, caption: Caption, out_dir: Path, token_classes: int) -> Path:
    torch_p = _softmax(series["joint_logits_torch"][:, :token_classes])
    exported_p = _softmax(series["joint_logits_exported"][:, :token_classes])
    order = np.argsort(-torch_p, axis=-1)[:, :TOP_K]  # Torch's top-k tokens per frame
    torch_top = np.take_along_axis(torch_p, order, axis=-1)
    exported_top = np.take_along_axis(exported_p, order, axis=-1)
    plt, fig, (dist, top, bottom) = _figure(3)
    ranks = np.arange(1, TOP_K + 1)
    width = 0.38
    for offset, top_p, label, color in ((-width / 2, torch_top, "Torch", "black"),
                                        (width / 2, exported_top, "exported joint", "tab:blue")):
        mean, std = top_p.mean(0), top_p.std(0)
        # ± std cut at the probabilities' bounds: a whisker never claims a probability above 1 or below 0
        dist.bar(ranks + offset, mean, width, yerr=[np.minimum(std, mean), np.minimum(std, 1 - mean)], label=label,
                 color=color, alpha=0.7, capsize=2)
    dist.set_xticks(ranks)
    dist.set_ylim(0, 1.02)
    dist.set_xlabel("rank of the token in Torch's distribution (mean ± std over frames, cut at 0 and 1)")
    dist.set_ylabel("token probability")
    dist.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    exported = {"joint": series["joint_l2_exported"]}
    _torch_vs_exported(top, series["joint_l2_torch"], exported, "L2 of logits", "encoder frame")
    _delta(bottom, series["joint_l2_torch"], exported, "encoder frame")
    return _save(plt, fig, caption, f"Joint: top-{TOP_K} token probabilities and logit L2 per frame",
                 out_dir / "joint_topk_l2.png")


def _token_agreement(ax, torch_tokens, exported_tokens, blank: int, exported: str) -> None:
    """Torch's token per frame, and the exported package's where it agrees and where it differs."""
    agree = torch_tokens == exported_tokens
    frames = np.arange(torch_tokens.size)
    ax.axhline(blank, color="tab:purple", linewidth=0.8, linestyle=":", label=f"blank (id {blank})")
    ax.scatter(frames, torch_tokens, s=28, facecolors="none", edgecolors="black", label="Torch")
    ax.scatter(frames[agree], exported_tokens[agree], s=8, color="tab:green", label=f"{exported}, agrees")
    ax.scatter(frames[~agree], exported_tokens[~agree], s=14, color="tab:red", marker="x", label=f"{exported}, differs")
    ax.set_title(f"token agreement {agree.mean():.1%} ({int((~agree).sum())} of {agree.size} frames differ; "
                 f"{int((torch_tokens == blank).sum())} of Torch's decisions are blank)", fontsize=9)
    ax.set_ylabel("token id")
    ax.set_xlabel("encoder frame")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)


def decisions(series: dict, caption: Caption, out_dir: Path, blank: int) -> Path:
    plt, fig, (tokens, probs) = _figure(2)
    _token_agreement(tokens, series["decision_token_torch"], series["decision_token_exported"], blank,
                     "joint_decision")
    _torch_vs_exported(probs, series["decision_prob_torch"], {"joint_decision": series["decision_prob_exported"]},
                       "token probability", "encoder frame")
    probs.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    return _save(plt, fig, caption, "Joint decision: token agreement and token probability",
                 out_dir / "joint_decision.png")


def ctc_head(series: dict, caption: Caption, out_dir: Path, blank: int) -> Path:
    """The CTC head's greedy decision per valid frame (the argmax of its logits), Torch's against
    the package's, and the logits' L2 per frame."""
    plt, fig, (tokens, top, bottom) = _figure(3)
    _token_agreement(tokens, series["ctc_token_torch"], series["ctc_token_exported"], blank, "ctc_head")
    exported = {"ctc_head": series["ctc_l2_exported"]}
    _torch_vs_exported(top, series["ctc_l2_torch"], exported, "L2 of CTC logits", "encoder frame")
    _delta(bottom, series["ctc_l2_torch"], exported, "encoder frame")
    return _save(plt, fig, caption, "CTC head: greedy decision per frame and logit L2 per frame",
                 out_dir / "ctc_head.png")


def parity_plots(series: dict, caption: Caption, out_dir: Path, token_classes: int) -> list[Path]:
    """Every parity plot whose series the run produced (a component not exported draws nothing).
    ``token_classes`` counts the blank, the last class."""
    has = lambda *names: all(n in series for n in names)  # noqa: E731
    drawn = []
    for ready, draw in (
        (has("mel_torch", "mel_exported"), lambda: mel_composite(series, caption, out_dir)),
        (has("encoder_l2_torch") or has("mel_encoder_l2_torch"), lambda: encoder_l2(series, caption, out_dir)),
        (has("decoder_l2_torch", "decoder_l2_exported"), lambda: decoder_steps(series, caption, out_dir)),
        (has("joint_logits_torch", "joint_logits_exported", "joint_l2_torch"),
         lambda: joint_topk(series, caption, out_dir, token_classes)),
        (has("decision_token_torch", "decision_token_exported"),
         lambda: decisions(series, caption, out_dir, blank=token_classes - 1)),
        (has("ctc_token_torch", "ctc_token_exported", "ctc_l2_torch"),
         lambda: ctc_head(series, caption, out_dir, blank=token_classes - 1)),
    ):
        if ready:
            drawn.append(draw())
    return drawn


def latency_caption(block: dict, description: dict) -> Caption:
    """Backend (labelled as executor timings where they are), compute units, precision, threads."""
    backend = block["backend"] + (" (MIL executor timings, not Core ML)" if block["backend"] == "mil" else "")
    return Caption.of(description, f"{backend} · {block['compute_units']} · {block['compute_precision']} · "
                                   f"Torch threads {block['threads']['torch']}")


def _ms(value: float) -> str:
    """A time in ms as people write it: 0.417, 96.5, 1,620."""
    return f"{value:,.0f}" if value >= 1000 else f"{value:.3g}"


def _paired_bars(ax, names: list[str], sides: list[tuple[str, list[dict], str]], ylabel: str) -> None:
    """Bars of the median per side, whiskers from the fastest to the 90th percentile (a range a log
    axis can hold, unlike ± std); log scale spanning the values (a bar starts at the axis' foot),
    the median written on each bar."""
    from matplotlib import ticker  # lazy: matplotlib loads only when drawing

    x = np.arange(len(names))
    width = 0.8 / len(sides)
    for i, (label, stats, color) in enumerate(sides):
        medians = np.array([s["median"] for s in stats])
        spread = [medians - [s["min"] for s in stats], [s["p90"] for s in stats] - medians]
        bars = ax.bar(x + (i - (len(sides) - 1) / 2) * width, medians, width, yerr=spread, capsize=3, label=label,
                      color=color, alpha=0.85, error_kw={"elinewidth": 1})
        ax.bar_label(bars, labels=[_ms(m) for m in medians], fontsize=7, padding=2)
    ax.set_xticks(x, names, rotation=15, ha="right")
    ax.set_yscale("log")
    lows = [s["min"] for _, stats, _ in sides for s in stats]
    highs = [s["p90"] for _, stats, _ in sides for s in stats]
    ax.set_ylim(min(lows) / 3, max(highs) * 2.5)  # room for the labels above the tallest bar
    ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: _ms(v)))
    ax.set_ylabel(ylabel)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, title="bar: median\nwhisker: min to p90",
              title_fontsize=7)  # beside the axes: no bar or label under it


def _times_axis(ax) -> None:
    """A log axis of factors labelled 0.1×, 0.2×, 0.5×, 1×, 2× … and no labels in between."""
    from matplotlib import ticker  # lazy: matplotlib loads only when drawing

    ax.yaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}×"))
    ax.yaxis.set_minor_formatter(ticker.NullFormatter())


def _speedup_bars(ax, names: list[str], entries: list[dict], ylabel: str, faster: str) -> None:
    """Each case's paired speedup as a bar from 1× (up: the export is faster, down: slower) with its
    95 % interval; an interval cut at the axis' edge ends in an arrow; a flagged case hatched."""
    speedups = np.array([e["speedup"] for e in entries])
    # the axis spans the speedups and 1×, a factor 3 beyond; a wider interval (few rounds) is cut at its edge
    bottom, top = min(speedups.min(), 1.0) / 3, max(speedups.max(), 1.0) * 3
    lows = np.array([e["speedup_ci95"][0] for e in entries])
    highs = np.array([e["speedup_ci95"][1] for e in entries])
    x = np.arange(len(names))
    colors = ["tab:green" if s >= 1 else "tab:red" for s in speedups]
    ax.bar(x, speedups - 1.0, bottom=1.0, color=colors, alpha=0.85, edgecolor="white",
                  hatch=["//" if e["flags"] else "" for e in entries])
    ax.errorbar(x, speedups, yerr=[speedups - np.clip(lows, bottom, top), np.clip(highs, bottom, top) - speedups],
                fmt="none", ecolor="black", capsize=4, elinewidth=1)
    for i in np.flatnonzero(highs > top):
        ax.plot(x[i], top, marker="^", color="black", markersize=7, clip_on=False)
    for i in np.flatnonzero(lows < bottom):
        ax.plot(x[i], bottom, marker="v", color="black", markersize=7, clip_on=False)
    for i, (speedup, entry) in enumerate(zip(speedups, entries, strict=True)):  # past the bar's end and its whisker
        up = speedup >= 1
        end = min(highs[i], top) if up else max(lows[i], bottom)
        ax.annotate(f"{speedup:.2f}×" + (" (flagged)" if entry["flags"] else ""), (x[i], max(end, speedup) if up
                    else min(end, speedup)), xytext=(0, 4 if up else -4), textcoords="offset points", ha="center",
                    va="bottom" if up else "top", fontsize=8)
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.set_ylabel(ylabel)
    ax.set_yscale("log")
    ax.set_ylim(bottom, top)
    _times_axis(ax)
    ax.set_xticks(x, names, rotation=15, ha="right")
    notes = [f"up from 1×: {faster} is faster; down: slower"]
    if (highs > top).any() or (lows < bottom).any():
        notes.append("▲▼ an interval that runs off the axis")
    if any(e["flags"] for e in entries):
        notes.append("hatched: flagged, read with care (a side's spread above 10 % CV, or a busy host: see the "
                     "latency block)")
    ax.set_xlabel("\n".join(textwrap.wrap("; ".join(notes), 130)), fontsize=8)


def latency_plots(block: dict, description: dict, out_dir: Path) -> list[Path]:
    """Latency summary, speedup, fused against separate, fused speedup."""
    caption = latency_caption(block, description)
    backend = "executor" if block["backend"] == "mil" else block["backend"]
    rows = {**block["components"], **{f"end to end ({k})": v for k, v in block["end_to_end"].items()},
            **{f"streaming chunk\n({Caption(v['model'], '').model_name})": v
               for v in block.get("streaming", {}).values()}}
    drawn = []
    if rows:
        names = list(rows)
        plt, fig, (ax,) = _figure(1, height=4.2)
        _paired_bars(ax, names, [("Torch CPU", [rows[n]["torch_ms"] for n in names], "dimgray"),
                                 (f"exported ({backend})", [rows[n]["backend_ms"] for n in names], "tab:blue")],
                     f"ms per call ({block_runs(rows)} rounds per side)")
        drawn.append(_save(plt, fig, caption, "Latency per component, Torch against the exported package",
                           out_dir / "latency_summary.png"))
        plt, fig, (ax,) = _figure(1, height=3.6)
        _speedup_bars(ax, names, [rows[n] for n in names],
                      f"Torch time / {backend} time\n(geometric mean of paired rounds, 95 % CI)", "the export")
        drawn.append(_save(plt, fig, caption, "Speedup of the exported packages over Torch",
                           out_dir / "latency_speedup.png"))
    fused = block["fused"]
    if fused:
        names = list(fused)
        plt, fig, (ax,) = _figure(1, height=3.8)
        _paired_bars(ax, names, [("separate packages", [fused[n]["separate_ms"] for n in names], "tab:orange"),
                                 ("fused package", [fused[n]["fused_ms"] for n in names], "tab:blue")],
                     f"ms per call ({backend}, {block_runs(fused)} rounds per side)")
        drawn.append(_save(plt, fig, caption, "Fused packages against their parts run in sequence "
                           "(mel_encoder vs preprocessor→encoder; joint_decision vs joint + host decision)",
                           out_dir / "latency_fused_vs_separate.png"))
        plt, fig, (ax,) = _figure(1, height=3.2)
        _speedup_bars(ax, names, [fused[n] for n in names],
                      "separate time / fused time\n(geometric mean of paired rounds, 95 % CI)", "the fused package")
        drawn.append(_save(plt, fig, caption, "Speedup of fusing", out_dir / "latency_fused_speedup.png"))
    for name, entry in block.get("streaming", {}).items():
        drawn.append(_stream_timeline(entry, caption, backend, out_dir / f"latency_streaming_{name}.png"))
    return drawn


def _stream_timeline(entry: dict, caption: Caption, backend: str, path: Path) -> Path:
    """Each chunk's time along the stream on both sides, against the chunk's own audio (what a
    live stream allows), with the speech onset and each side's first token."""
    plt, fig, (ax,) = _figure(1, height=4.0)
    onset_chunk = entry["speech_onset_seconds"] * 1e3 / entry["chunk_ms"]
    for side, label, color in (("torch", "NeMo streaming (Torch CPU)", "dimgray"),
                               ("backend", f"streaming packages ({backend})", "tab:blue")):
        times = entry["per_chunk_ms"][side]
        first = entry["time_to_first_token_ms"][side]
        ax.plot(range(len(times)), times, color=color, linewidth=1, label=(
            f"{label}: p50 {entry[f'{side}_ms']['median']:.3g} ms, p90 {entry[f'{side}_ms']['p90']:.3g} ms; "
            f"stream RTF {entry['stream_rtf'][side]:.3f}; first token "
            + (f"{first:.0f} ms after speech starts" if first is not None else "never")))
    ax.axhline(entry["chunk_ms"], color="tab:red", linestyle="--", linewidth=0.9,
               label=f"the chunk's audio, {entry['chunk_ms']} ms: slower falls behind a live stream")
    ax.axvline(onset_chunk, color="tab:green", linestyle=":", linewidth=1, label="speech starts")
    ax.set_yscale("log")
    ax.set_xlabel(f"chunk ({entry['chunks']} chunks, {entry['stream_seconds']:.1f} s of audio)")
    ax.set_ylabel("ms per chunk\n(encoder and decoding)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), fontsize=8, ncol=1)
    return _save(plt, fig, Caption(entry["model"], caption.measured),
                 "Streaming, chunk by chunk: NeMo's cache-aware streaming against the streaming packages", path)


def block_runs(rows: dict) -> str:
    rounds = sorted({entry["paired_rounds"] for entry in rows.values()})
    return "/".join(str(r) for r in rounds)


QUANTIZE_DIR = Path("plots") / "quantize"
FUSED_COMPONENTS = ("mel_encoder", "joint_decision", "joint_decision_single_step")
# metric -> (axis label, log axis, the uncompressed export's value in the same entry, file)
QUANTIZE_METRICS = {
    "quality": ("quality loss ‖ref − q‖ / ‖ref‖ (1 − quality; log, lower is closer to the uncompressed export)",
                True, None, "quantize_quality.png"),
    "size_mb": ("package size (MB)", True, "base_size_mb", "quantize_size.png"),
    "compression_ratio": ("compression ratio (uncompressed / compressed)", False, None, "quantize_compression.png"),
    "latency_ms": ("latency per call (ms, median)", True, "base_latency_ms", "quantize_latency.png"),
    "compile_ms": ("Core ML compile time (ms)", True, None, "quantize_compile_time.png"),
}
# metric -> the entry's keys of its spread (median, min, p90, cv, flags): the variant's and the baseline's
QUANTIZE_SPREAD = {"latency_ms": ("latency", "base_latency")}
LATENCY_NOTE = ("bar: median; whisker: fastest call to p90; hatched: flagged, read with care (CV above 10 % or a "
                "busy host)")
# 1 − quality below this is drawn on the floor: the variant left that output as it was
IDENTICAL = 1e-6


def _variant_colors(variants: list[str]) -> dict:
    """A colour per variant from tab20 without its greys, which the legends keep for shapes and
    the uncompressed baseline."""
    from matplotlib import colormaps  # lazy: matplotlib loads only when drawing

    palette = [colormaps["tab20"](i) for i in (0, 2, 4, 6, 8, 10, 12, 16, 18, 1, 3, 5, 7, 9, 11, 13, 17, 19)]
    return {v: palette[i % len(palette)] for i, v in enumerate(variants)}


def _quality_gates(summary: dict) -> dict[float, list[str]]:
    """Quality threshold -> the variants gated at it."""
    gates: dict[float, list[str]] = {}
    for variant, entry in summary.items():
        threshold = entry.get("gates", {}).get("thresholds", {}).get("quality")
        if threshold is not None:
            gates.setdefault(threshold, []).append(variant)
    return gates


def _gate_lines(ax, summary: dict, at=lambda threshold: threshold) -> None:
    """One labelled dashed line per quality gate, at ``at(threshold)`` on the axis."""
    gated = _quality_gates(summary)
    styles = ["--", ":", "-.", (0, (5, 1, 1, 1, 1, 1))] * 9  # more than there are gates
    for (threshold, variants), style in zip(sorted(gated.items()), styles, strict=False):
        who = "every gated variant" if len(gated) == 1 else ", ".join(variants)
        ax.axhline(at(threshold), color="black", linestyle=style, linewidth=0.9,
                   label=f"quality gate ≥ {threshold:g} ({who})")


def _variant_bars(ax, summary: dict, components: list[str], metric: str, colors: dict) -> None:
    """Grouped bars: one group per component; the uncompressed export first where the metric has
    a baseline, then one bar per variant."""
    ylabel, log, baseline, _ = QUANTIZE_METRICS[metric]
    spread = QUANTIZE_SPREAD.get(metric)  # the entries' spread of the metric: (own, baseline's)
    variants = [v for v, entry in summary.items() if not entry.get("error")]
    entries = lambda v: [summary[v]["components"].get(c, {}) for c in components]  # noqa: E731
    series = [(variant, colors[variant], [e.get(metric) for e in entries(variant)],
               [e.get(spread[0]) if spread else None for e in entries(variant)]) for variant in variants]
    if baseline is not None:
        base = [next((e for v in variants if (e := summary[v]["components"].get(c, {})).get(baseline) is not None),
                     {}) for c in components]
        if any(b.get(baseline) is not None for b in base):
            series.insert(0, ("uncompressed export", "black", [b.get(baseline) for b in base],
                              [b.get(spread[1]) if spread else None for b in base]))
    x = np.arange(len(components))
    width = 0.85 / max(1, len(series))
    for i, (label, color, values, spreads) in enumerate(series):
        heights = np.array([np.nan if v is None else v for v in values], dtype=float)
        if metric == "quality":  # drawn as the loss, so variants near quality 1 stay apart
            heights = np.maximum(1 - heights, IDENTICAL)
        # whiskers from the fastest call to the 90th percentile; a flagged timing hatched
        whiskers = [[h - s["min"] if s else 0.0 for h, s in zip(heights, spreads, strict=True)],
                    [s["p90"] - h if s else 0.0 for h, s in zip(heights, spreads, strict=True)]]
        ax.bar(x + (i - (len(series) - 1) / 2) * width, heights, width, color=color, label=label,
               yerr=whiskers if any(spreads) else None, error_kw={"elinewidth": 0.8, "capsize": 1.5},
               hatch=["//" if s and s.get("flags") else "" for s in spreads], edgecolor="white", linewidth=0)
    ax.set_xticks(x, components, rotation=15, ha="right")
    ax.set_ylabel("\n".join(textwrap.wrap(ylabel, 45)), fontsize=8)
    if log:
        ax.set_yscale("log")
    if metric == "quality":
        ax.set_ylim(IDENTICAL / 2, 1.5)
        ax.axhline(IDENTICAL, color="lightgrey", linewidth=3, zorder=0,
                   label=f"output unchanged (1 − quality < {IDENTICAL:g})")
        _gate_lines(ax, summary, at=lambda threshold: max(1 - threshold, IDENTICAL))
    if metric in QUANTIZE_SPREAD:
        ax.set_xlabel(LATENCY_NOTE, fontsize=7)


def _unhatched(legend) -> None:
    """A legend's patches plain: a variant's colour, whichever of its bars is hatched."""
    for patch in legend.get_patches():
        patch.set_hatch(None)


def quantization_plots(summary: dict, caption: Caption, out_dir: Path) -> tuple[list[Path], list[str]]:
    """Per-component quality, size, compression, latency and compile time; the fused packages'
    quality, size, compression and latency; quality against size. ``summary`` maps each variant to
    its entry. Returns the plots and a line per plot that could not be drawn (no such measurement
    here)."""
    built = [v for v, e in summary.items() if not e.get("error")]
    if not built:
        return [], ["no variant was built"]
    colors = _variant_colors(built)
    components = list(summary[built[0]]["components"])
    measured = lambda metric, names: any(summary[v]["components"][c].get(metric) is not None  # noqa: E731
                                         for v in built for c in names)
    drawn, skipped = [], []
    for metric, (label, _, _, name) in QUANTIZE_METRICS.items():
        if not measured(metric, components):
            skipped.append(f"{name}: no {metric} measured"
                           + (" (Core ML compiles only on macOS)" if metric == "compile_ms" else
                              " (timing off: --runs 0)" if metric == "latency_ms" else ""))
            continue
        plt, fig, (ax,) = _figure(1, height=4.0)
        _variant_bars(ax, summary, components, metric, colors)
        _unhatched(ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5)))
        drawn.append(_save(plt, fig, caption, f"Per component: {label}", out_dir / name))
    fused = [c for c in FUSED_COMPONENTS if c in components]
    if fused:
        metrics = [m for m in ("quality", "size_mb", "compression_ratio", "latency_ms") if measured(m, fused)]
        plt, fig, axes = _figure(len(metrics), height=2.8)
        for ax, metric in zip(axes, metrics, strict=True):
            _variant_bars(ax, summary, fused, metric, colors)
        handles = {}
        for ax in axes:  # one legend for every panel: the baseline and the gate appear in some only
            for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
                handles.setdefault(label, handle)
        _unhatched(fig.legend(list(handles.values()), list(handles), fontsize=7, loc="center right"))
        drawn.append(_save(plt, fig, caption, "Fused packages: quality, size, compression, latency",
                           out_dir / "quantize_fused.png", right=0.74))
    drawn.append(_quality_against_size(summary, built, components, colors, caption, out_dir))
    drawn += [sensitivity_plot(variant, summary[variant]["sensitivity"], caption, out_dir)
              for variant in built if summary[variant].get("sensitivity")]
    return drawn, skipped


def sensitivity_plot(variant: str, rows: list[dict], caption: Caption, out_dir: Path) -> Path:
    """One bar per group of weights, compressed alone by ``variant``: the headline output's PSNR
    against the uncompressed export (lower is more sensitive), where the rows have it the held-out
    set's WER change and words changed, and the clip's token error rate."""
    on_set = any(r.get("wer_difference_points") is not None for r in rows)
    plt, fig, axes = _figure(2 + on_set, height=2.6, width=max(8.0, 0.28 * len(rows) + 3))
    psnr, errors = axes[0], axes[-1]
    groups = [r["group"] for r in rows]
    components = list(dict.fromkeys(r["component"] for r in rows))
    palette = plt.get_cmap("tab10")
    colors = [palette(components.index(r["component"])) for r in rows]
    x = np.arange(len(rows))
    values = [r["psnr_db"] if r["psnr_db"] is not None and np.isfinite(r["psnr_db"]) else np.nan for r in rows]
    psnr.bar(x, values, color=colors)
    for i in np.flatnonzero(np.isnan(values)):  # the output did not move: no finite PSNR to draw
        psnr.text(i, 1, "unchanged", rotation=90, ha="center", va="bottom", fontsize=7, color=colors[i])
    psnr.set_ylabel("headline PSNR (dB)\nlower: more sensitive", fontsize=8)
    weakest = int(np.nanargmin(values))
    psnr.annotate(f"{values[weakest]:.1f} dB", (weakest, values[weakest]), xytext=(0, 2),
                  textcoords="offset points", ha="center", va="bottom", fontsize=7)
    if on_set:  # the held-out set: the WER's change in points, each bar labelled with the words it changes
        wer = axes[1]
        changes = [np.nan if r.get("wer_difference_points") is None else r["wer_difference_points"] for r in rows]
        wer.bar(x, changes, color=colors)
        wer.axhline(0, color="grey", linewidth=0.8)
        for i, r in enumerate(rows):
            if r.get("flips") is not None:
                wer.annotate(f"{r['flips']}", (i, max(changes[i], 0)), xytext=(0, 2), textcoords="offset points",
                             ha="center", va="bottom", fontsize=6)
        wer.margins(y=0.15)  # room for the labels
        wer.set_ylabel("held-out WER change\n(points; label: words\nchanged)", fontsize=8)
        wer.set_xticks(x, [""] * len(rows))
    rates = [r["token_error_rate"] for r in rows]
    errors.bar(x, [np.nan if r is None else r for r in rates], color=colors)
    errors.set_ylabel("clip's token error rate\nagainst uncompressed", fontsize=8)
    errors.set_xticks(x, groups, rotation=60, ha="right", fontsize=7)
    psnr.set_xticks(x, [""] * len(rows))
    for ax in axes:
        ax.grid(axis="y", alpha=0.3)
    handles = [plt.Rectangle((0, 0), 1, 1, color=palette(i)) for i in range(len(components))]
    psnr.legend(handles, [f"{c} (PSNR of its {COMPONENTS[c].headline})" for c in components], fontsize=7,
                loc="lower left", bbox_to_anchor=(0.0, 1.01), ncol=len(components), frameon=False)
    return _save(plt, fig, caption, f"Sensitivity of {variant}: each group of weights compressed alone, the "
                 "rest as exported", out_dir / f"sensitivity_{variant}.png")


def search_plot(search: dict, summary: dict, caption: Caption, out_dir: Path) -> Path:
    """Every try of a recipe search by size and quality, passed or failed, its Pareto front and
    the recipe chosen, with the sweep's fixed variants on the same axes: on the held-out set's WER
    where the tries were weighed there, and on the headline quality."""
    fixed = {name: entry for name, entry in summary.items() if not entry.get("error") and name != SEARCHED}
    tries = search["tries"]
    panels = [("wer", "held-out WER (%)", lambda t: 100 * t["wer"])] * any(t["wer"] is not None for t in tries)
    panels.append(("quality", "1 − lowest headline quality (log)", lambda t: max(t["loss"], IDENTICAL)))
    plt, fig, axes = _figure(len(panels), height=3.4, width=9.0)
    for ax, (front_key, label, value) in zip(axes, panels, strict=True):
        for passed, color, marker in ((True, "tab:green", "o"), (False, "tab:red", "x")):
            shown = [t for t in tries if t["passed"] == passed and (front_key != "wer" or t["wer"] is not None)]
            ax.scatter([t["size_bytes"] / 1e6 for t in shown], [value(t) for t in shown], color=color, marker=marker,
                       s=30, label=f"tries that {'passed' if passed else 'failed'} the gates ({len(shown)})")
        front = [next(t for t in tries if t["name"] == name) for name in search["front"][front_key]]
        ax.plot([t["size_bytes"] / 1e6 for t in front], [value(t) for t in front], color="tab:blue", linewidth=1,
                drawstyle="steps-post", label="Pareto front of the tries")
        chosen = next((t for t in tries if t["name"] == search["chosen"]), None)
        if chosen is not None and (front_key != "wer" or chosen["wer"] is not None):
            ax.scatter([chosen["size_bytes"] / 1e6], [value(chosen)], marker="*", s=220, facecolors="none",
                       edgecolors="black", linewidths=1.2, label=f"{SEARCHED} ({chosen['name']})", zorder=3)
        drawn = 0
        for name, entry in fixed.items():
            point = {"wer": (entry.get("held_out") or {}).get("wer"),
                     "loss": 1 - min(c["quality"] for c in entry["components"].values())}
            if front_key == "wer" and point["wer"] is None:
                continue
            size = weighed_size(entry["components"]) / 1e6
            ax.scatter([size], [value(point)], marker="s", s=28, color="black", zorder=3)
            ax.annotate(name, (size, value(point)), xytext=(4, 3), textcoords="offset points", fontsize=7)
            drawn += 1
        ax.scatter([], [], marker="s", s=28, color="black",
                   label=f"the sweep's fixed variants ({drawn} of {len(fixed)}"
                         + (": those in --held-out)" if front_key == "wer" else ")"))
        if front_key == "quality":
            ax.set_yscale("log")
        ax.set_ylabel(label + "\nlower is better", fontsize=8)
        ax.set_xlabel("encoder + decoder + joint packages (MB)", fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return _save(plt, fig, caption, f"Recipe search over {', '.join(search['schemes'])}: every try by size and "
                 "quality", out_dir / "search_pareto.png")


def _quality_against_size(summary: dict, built: list[str], components: list[str], colors: dict, caption: Caption,
                          out_dir: Path) -> Path:
    """1 − quality on a log axis, so variants near quality 1 stay apart; better is up."""
    plt, fig, (ax,) = _figure(1, height=4.8)
    markers = "osD^v<>pPX*"
    points: dict[tuple, list] = {}  # where a point falls (to the eye) -> the (variant, component) drawn there
    for variant in built:
        for j, component in enumerate(components):
            entry = summary[variant]["components"][component]
            size, loss = entry["size_mb"], max(1 - entry["quality"], IDENTICAL)
            points.setdefault((round(np.log10(size), 2), round(np.log10(loss), 1)), []).append(
                (variant, j, size, loss))
    for together in points.values():  # points that coincide drawn as rings, the largest first: each colour shows
        for k, (variant, j, size, loss) in enumerate(together):
            ax.scatter(size, loss, facecolors=colors[variant] if k == len(together) - 1 else "none",
                       edgecolors=colors[variant], linewidths=2, marker=markers[j % len(markers)],
                       s=40 + 60 * (len(together) - 1 - k))
    for variant in built:
        ax.scatter([], [], color=colors[variant], marker="s", s=40, label=variant)
    for j, component in enumerate(components):
        ax.scatter([], [], facecolors="none", edgecolors="black", marker=markers[j % len(markers)], label=component)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.invert_yaxis()
    ax.axhline(IDENTICAL, color="lightgrey", linewidth=3, zorder=0,
               label=f"output unchanged (1 − quality < {IDENTICAL:g})")
    _gate_lines(ax, summary, at=lambda threshold: max(1 - threshold, IDENTICAL))
    ax.set_xlabel("package size (MB, log)")
    ax.set_ylabel("1 − quality (log; up is closer\nto the uncompressed export)")
    ax.legend(fontsize=7, ncol=2, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.set_title("points that coincide are drawn as rings around each other, one per variant", fontsize=8)
    return _save(plt, fig, caption, "Quality against size: each point a component of a variant (colour: variant, "
                 "shape: component)", out_dir / "quantize_quality_vs_size.png")


# Data-set evaluation (validation.evaluation): per-utterance WER of the export against NeMo's on the
# same windows, the distribution of their differences, and the gap taken apart.
EVALUATION_DIR = Path("plots") / "evaluation"


def evaluation_plots(block: dict, records: list[dict], caption: Caption, out_dir: Path) -> tuple[list[Path], list[str]]:
    """The plots, and a line for each one that cannot be drawn (no reference texts)."""
    drawn, skipped = [], []
    scored = [r for r in records if "wer" in r]
    paths = block.get("paths", {"model": "nemo_full", "reference": "nemo_windowed", "middle": "windowing"})
    reference_path, middle = paths["reference"], paths["middle"]
    same = "on the same windows" if middle == "windowing" else "streamed on the same chunks"
    exports = list(block[f"agreement_with_{reference_path}"])
    if not scored:
        skipped.append("per-utterance WER and its differences: no utterance has a reference text")
    else:
        plt, fig, (ax,) = _figure(1, height=5.0)
        reference = np.array([100 * r["wer"][reference_path]["wer"] for r in scored])
        top = max(1.0, float(reference.max()))
        for label in exports:
            values = np.array([100 * r["wer"][label]["wer"] for r in scored])
            top = max(top, float(values.max()))
            # utterances on one point (most: both 0 %) drawn once, the marker's area and a number say how many
            points, counts = np.unique(np.round(np.stack([reference, values], 1), 6), axis=0, return_counts=True)
            ax.scatter(points[:, 0], points[:, 1], s=14 * np.sqrt(counts) * 3, alpha=0.6,
                       label=f"{label} ({len(values)} utterances at {len(points)} points)")
            for (x, y), count in zip(points, counts, strict=True):
                if count > 1:
                    ax.annotate(f"{count}", (x, y), textcoords="offset points", xytext=(4 + 2 * np.sqrt(count), 6),
                                fontsize=8)
        ax.plot([0, top], [0, top], color="grey", linewidth=0.8, label="equal WER")
        ax.set_title("marker area grows with the utterances at the point; a number says how many (if more than one)",
                     fontsize=8)
        ax.set_xlabel(f"NeMo {same}: WER per utterance (%)")
        ax.set_ylabel("export: WER per utterance (%)")
        legend = ax.legend(fontsize=8, loc="upper left")
        for handle in legend.legend_handles:  # one size in the legend, not the largest point's
            if hasattr(handle, "set_sizes"):
                handle.set_sizes([30])
        drawn.append(_save(plt, fig, caption, "Per-utterance WER, export against NeMo", out_dir / "wer_scatter.png"))

        plt, fig, (ax,) = _figure(1, height=3.4)
        for label in exports:
            differences = [100 * (r["wer"][label]["wer"] - r["wer"][reference_path]["wer"]) for r in scored]
            ax.hist(differences, bins=41, alpha=0.6, label=f"{label}: {sum(d != 0 for d in differences)} of "
                                                           f"{len(differences)} utterances differ")
        ax.axvline(0.0, color="grey", linewidth=0.8)
        ax.set_xlabel(f"export WER − NeMo WER {same}, per utterance (points)")
        ax.set_ylabel("utterances")
        ax.legend(fontsize=8)
        drawn.append(_save(plt, fig, caption, "Per-utterance WER differences", out_dir / "wer_differences.png"))

    parts = block["decomposition_points"]
    if parts["model"] is None:
        skipped.append("WER decomposition: no utterance has a reference text")
    else:
        plt, fig, (ax,) = _figure(1, height=3.6)
        names = ["model\n(NeMo, whole utterances,\nagainst the text)",
                 f"{middle}\n(NeMo {'on windows' if middle == 'windowing' else 'streamed'}\n− NeMo whole)",
                 *[f"export numerics\n({label} − NeMo\n{same})" for label in exports]]
        values = [parts["model"], parts[middle], *[parts["export"][label] for label in exports]]
        bars = ax.bar(names, values, color=["#4c72b0", "#dd8452", *["#55a868"] * len(exports)])
        ax.bar_label(bars, labels=[f"{v:+.2f}" if i else f"{v:.2f}" for i, v in enumerate(values)], fontsize=8)
        ax.axhline(0.0, color="grey", linewidth=0.8)
        ax.set_ylabel("WER points")
        ax.tick_params(axis="x", labelsize=8)
        drawn.append(_save(plt, fig, caption, "Where the WER comes from", out_dir / "wer_decomposition.png"))
    drawn += long_audio_plots({block.get("set") or "this set": block}, caption, out_dir)
    return drawn, skipped


def long_audio_plots(sets: dict[str, dict], caption: Caption, out_dir: Path) -> list[Path]:
    """Strategies × sets (each set's evaluation block with ``strategies``): WER of NeMo on the
    windows and of the export, NeMo on whole recordings as a line; and the export's word errors
    near the seams against elsewhere. With rendered word times, the word timing too."""
    drawn = []
    with_strategies = {name: block for name, block in sets.items() if block.get("strategies")}
    if with_strategies:
        plt, fig, axes = _figure(2, height=3.2, width=max(7.0, 5.8 * len(with_strategies)))
        fig.clf()
        grid = fig.subplots(2, len(with_strategies), squeeze=False)
        for column, (name, block) in enumerate(with_strategies.items()):
            strategies = block["strategies"]
            names = list(strategies)
            x = np.arange(len(names))
            wer, seams_ax = grid[0][column], grid[1][column]
            for i, (label, color) in enumerate((("nemo_windowed", "#4c72b0"), ("export", "#55a868"))):
                values = [100 * strategies[n]["wer"][label]["wer"] for n in names]
                bars = wer.bar(x + (i - 0.5) * 0.38, values, 0.38, color=color, label=label)
                wer.bar_label(bars, labels=[f"{v:.2f}" for v in values], fontsize=7, padding=1)
            pipeline = [(i, 100 * strategies[n]["wer"]["nemo_pipeline"]["wer"]) for i, n in enumerate(names)
                        if "nemo_pipeline" in strategies[n]["wer"]]
            if pipeline:
                wer.scatter([i for i, _ in pipeline], [v for _, v in pipeline], marker="D", color="black", zorder=3,
                            label="NeMo's own buffered pipeline")
                for i, v in pipeline:
                    wer.annotate(f"{v:.2f}", (i, v), textcoords="offset points", xytext=(8, -3), fontsize=7)
            full = 100 * strategies[names[0]]["wer"]["nemo_full"]["wer"]
            wer.axhline(full, color="grey", linestyle="--", linewidth=0.9, label=f"nemo_full {full:.2f}")
            wer.set_title(f"{name}: WER by strategy", fontsize=9)
            wer.set_xticks(x, names, fontsize=8)
            wer.set_ylabel("WER (%)")
            wer.margins(y=0.6)
            wer.legend(fontsize=7, loc="upper left")
            for i, (side, color) in enumerate((("near_seams", "#c44e52"), ("elsewhere", "#8c8c8c"))):
                losses = [strategies[n].get("seam_losses", {}).get("export", {}).get(side, {}) for n in names]
                values = [100 * (c.get("rate") or 0.0) for c in losses]
                bars = seams_ax.bar(x + (i - 0.5) * 0.38, values, 0.38, color=color,
                                    label=f"{side.replace('_', ' ')} (±1 s)" if side == "near_seams" else side)
                seams_ax.bar_label(bars, labels=[f"{v:.1f}% of {c.get('words', 0)}\n{c.get('dropped', 0)}d "
                                                 f"{c.get('substituted', 0)}s {c.get('inserted', 0)}i "
                                                 f"{c.get('duplicated', 0)}r"
                                                 for v, c in zip(values, losses, strict=True)],
                                   fontsize=6, padding=1 + 18 * i)  # the second side's labels a row higher
            seams_ax.set_title(f"{name}: export word errors per reference word", fontsize=9)
            seams_ax.set_xticks(x, names, fontsize=8)
            seams_ax.set_ylabel("errors (%)")
            seams_ax.margins(y=0.8)
            seams_ax.legend(fontsize=7, loc="upper left", title="d dropped, s substituted, i inserted, r repeated",
                            title_fontsize=6)
        drawn.append(_save(plt, fig, caption, "Long-audio strategies side by side: WER and word errors at the seams",
                           out_dir / "long_audio_strategies.png"))
    timed = {name: block for name, block in sets.items() if block.get("timing_error")}
    if timed:
        plt, fig, _ = _figure(1, height=3.4, width=max(7.0, 4.2 * len(timed)))
        fig.clf()
        grid = fig.subplots(1, len(timed), squeeze=False)[0]
        for ax, (name, block) in zip(grid, timed.items(), strict=True):
            labels = list(block["timing_error"])
            x = np.arange(len(labels))
            for i, (key, color) in enumerate((("mean_abs_start_ms", "#4c72b0"), ("max_abs_start_ms", "#a6bddb"),
                                              ("mean_abs_end_ms", "#dd8452"), ("max_abs_end_ms", "#fdd0a2"))):
                values = [block["timing_error"][label][key] or 0.0 for label in labels]
                bars = ax.bar(x + (i - 1.5) * 0.2, values, 0.2, color=color, label=key.replace("_", " "))
                ax.bar_label(bars, labels=[f"{v:.0f}" for v in values], fontsize=6, padding=1)
            exported = block.get("word_timing", {}).get("export")
            if exported:
                ax.set_xlabel("\n".join(textwrap.wrap(
                    f"export against NeMo on the same windows: {exported['words']} words, starts up to "
                    f"{exported['max_abs_start_ms']:g} ms and ends up to {exported['max_abs_end_ms']:g} ms apart", 60)),
                    fontsize=7)
            ax.set_xticks(x, labels, fontsize=8)
            ax.set_ylabel("|model − rendered| (ms)")
            ax.set_title(f"{name}: word times against the rendered ones", fontsize=9)
            ax.margins(y=0.45)
            ax.legend(fontsize=7, loc="upper left", ncol=2)
        drawn.append(_save(plt, fig, caption, "Word timestamps from the TDT decisions against the rendered word times",
                           out_dir / "word_timing.png"))
    return drawn


STREAMING_DIR = Path("plots") / "streaming"
# a streaming run's label: its precision, and ", caches as states" for the stateful package
_PRECISION_STYLES = {"float32": ("tab:blue", "-"), "float16": ("tab:orange", "-"),
                     "float32, caches as states": ("tab:green", "--"), "float16, caches as states": ("tab:red", "--")}


def streaming_plot(block: dict, caption: Caption, out_dir: Path) -> Path:
    """Each compared output's largest error chunk by chunk, one panel per output, one line per
    precision, the tolerance's atol dashed: a drifting cache rises to the right."""
    runs = block["runs"]
    outputs = list(next(iter(runs.values()))["series"])
    plt, fig, axes = _figure(len(outputs), height=2.2)
    for ax, output in zip(axes, outputs, strict=True):
        for precision, run in runs.items():
            color, style = _PRECISION_STYLES.get(precision, ("tab:gray", "-"))
            errors = np.asarray(run["series"][output]["max_abs"], dtype=float)
            growth = run["growth"].get(output)
            label = f"{precision}" + (f" (last/first quarter {growth:.2f}x)" if growth is not None else "")
            ax.plot(np.arange(errors.size), np.maximum(errors, 1e-12), style, color=color, linewidth=1, label=label)
        atol = block["tolerances"][output].get("atol")
        if atol:
            ax.axhline(atol, color="black", linestyle="--", linewidth=0.8, label=f"tolerance atol {atol:g}")
        ax.set_yscale("log")
        ax.set_ylabel("max |error|")
        ax.set_title(output, fontsize=9, loc="left")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the panel: no chunk hidden
    axes[-1].set_xlabel(f"chunk ({block['chunk_ms']} ms of new audio each)")
    return _save(plt, fig, caption, "Streaming encoder against NeMo's cache-aware streaming, chunk by chunk",
                 out_dir / "stream_error_per_chunk.png", right=0.8)


_DEVICE_COLORS = {NEURAL_ENGINE: "tab:green", CPU: "tab:orange", UNKNOWN: "tab:gray"}
_DEVICE_LABELS = {NEURAL_ENGINE: "Neural Engine", CPU: "off it (CPU)", UNKNOWN: "unknown op kind"}


def placement_plot(name: str, placement: Placement, caption: Caption, out_dir: Path) -> Path:
    """The package's ops along the program: each op's FLOPs (log scale), coloured by the device
    predicted for it; ops without arithmetic (data movement) sit on the floor."""
    computing = [op for op in placement.ops if op.device != NO_COMPUTE]
    plt, fig, (ax,) = _figure(1, height=2.8, width=12.0)
    positions = np.arange(len(computing))
    flops = np.array([max(op.flops, 1) for op in computing], dtype=float)
    for device, color in _DEVICE_COLORS.items():
        chosen = [i for i, op in enumerate(computing) if op.device == device]
        if chosen:
            ax.bar(positions[chosen], flops[chosen], width=1.0, color=color,
                   label=f"{_DEVICE_LABELS[device]}: {len(chosen)} op(s)")
    summary = placement.summary()
    first = summary["first_off"]
    if first:
        at = next(i for i, op in enumerate(computing) if op.index == first["index"])
        ax.axvline(at, color="black", linestyle="--", linewidth=0.8,
                   label="\n".join(textwrap.wrap(f"first off (casts at the edges aside): op {at}, {first['op_type']}: "
                                                 f"{first['reason']}", 48)))
    ax.set_yscale("log")
    ax.set_xlim(-0.5, max(len(computing), 1) - 0.5)
    ax.set_xlabel("op, in program order (constants left out)")
    ax.set_ylabel("FLOPs (data movement at 1)")
    share = summary["neural_engine_flop_share"]
    ax.set_title(f"{name}: {summary['by_device'].get(NEURAL_ENGINE, 0)} of {summary['ops']} ops"
                 + (f" and {100 * share:.1f}% of FLOPs" if share is not None else "")
                 + f" predicted on the Neural Engine of {placement.chip}; {summary['transitions']} transition(s)",
                 fontsize=9, loc="left")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(plt, fig, caption, f"Neural Engine placement (predicted) — {name}", out_dir / f"{name}.png")


def range_plot(name: str, entry: dict, caption: Caption, out_dir: Path) -> Path:
    """The largest magnitude each op of an fp16 package reaches in its fp32 shadow, along the
    program, against fp16's largest value; the flagged ops in red."""
    values = np.asarray(entry["max_abs_per_op"], dtype=float)
    values[values <= 0] = np.nan  # integer, boolean or all-zero results: no bar
    plt, fig, (ax,) = _figure(1, height=2.6, width=12.0)
    flagged = set(entry["flagged_at"])
    for color, chosen, label in (("tab:blue", [i for i in range(values.size) if i not in flagged], "an op's results"),
                                 ("tab:red", sorted(flagged), f"flagged: {len(flagged)} op(s)")):
        if chosen:
            ax.bar(chosen, values[chosen], width=1.0, color=color, label=label)
    ax.axhline(65504, color="black", linestyle="--", linewidth=0.8, label="fp16's largest, 65,504")
    ax.set_yscale("log")
    ax.set_xlim(-0.5, max(values.size, 1) - 0.5)
    ax.set_xlabel("op, in program order")
    ax.set_ylabel("largest |value| (fp32 shadow)")
    ax.set_title(f"{name}: largest {entry['largest']:.4g} over {entry['inputs']} input(s); "
                 f"{len(entry['overflows'])} overflow(s)", fontsize=9, loc="left")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(plt, fig, caption, f"fp16 range — {name}", out_dir / f"{name}.png")

"""Parity plots, drawn from the series a ``ClipParity`` keeps (``validation.checks``).

Each figure's title names the model, backend, precision and host, so a PNG read on its own
says what it shows.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np

PARITY_DIR = Path("plots") / "compare-components"
TOP_K = 10


def _figure(rows: int, height: float = 2.6, width: float = 11.0):
    import matplotlib  # lazy: pyplot fixes its backend when imported: Agg is chosen only when drawing

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: as above

    fig, axes = plt.subplots(rows, 1, figsize=(width, 1.2 + height * rows), squeeze=False)
    return plt, fig, axes[:, 0]


def _save(plt, fig, title: str, subject: str, path: Path) -> Path:
    fig.suptitle("\n".join(textwrap.wrap(f"{subject} — {title}", 110)), fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _torch_vs_exported(ax, torch_values, exported: dict, ylabel: str, xlabel: str) -> None:
    ax.plot(torch_values, label="Torch (NeMo)", color="black", linewidth=1.6)
    for (name, values), style in zip(exported.items(), ("--", ":")):
        ax.plot(values, style, label=name, linewidth=1.2)
    ax.set_ylabel(ylabel)
    ax.set_xlabel(xlabel)
    ax.legend(loc="upper right", fontsize=8)


def _delta(ax, torch_values, exported: dict, xlabel: str) -> None:
    for name, values in exported.items():
        ax.plot(np.asarray(values) - np.asarray(torch_values), label=f"{name} − Torch", linewidth=1.0)
    ax.axhline(0.0, color="grey", linewidth=0.6)
    ax.set_ylabel("Δ L2")
    ax.set_xlabel(xlabel)
    ax.legend(loc="upper right", fontsize=8)


def mel_composite(series: dict, title: str, out_dir: Path) -> Path:
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
    return _save(plt, fig, title, "Mel spectrogram", out_dir / "mel_composite.png")


def encoder_l2(series: dict, title: str, out_dir: Path) -> Path:
    exported = {name: series[key] for name, key in (("encoder", "encoder_l2_exported"),
                                                    ("mel_encoder", "mel_encoder_l2_exported")) if key in series}
    reference = series.get("encoder_l2_torch", series.get("mel_encoder_l2_torch"))
    plt, fig, (top, bottom) = _figure(2)
    _torch_vs_exported(top, reference, exported, "L2 over channels", "encoder frame (80 ms)")
    _delta(bottom, reference, exported, "encoder frame (80 ms)")
    return _save(plt, fig, title, "Encoder and mel_encoder output L2 per frame", out_dir / "encoder_l2.png")


def decoder_steps(series: dict, title: str, out_dir: Path) -> Path:
    exported = {"decoder": series["decoder_l2_exported"]}
    plt, fig, (top, bottom) = _figure(2)
    _torch_vs_exported(top, series["decoder_l2_torch"], exported, "L2 of decoder output", "symbol step")
    _delta(bottom, series["decoder_l2_torch"], exported, "symbol step")
    return _save(plt, fig, title, "Decoder rolled out over symbol steps (h, c carried)", out_dir / "decoder_steps.png")


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(shifted.astype(np.float64))
    return e / e.sum(axis=-1, keepdims=True)


def joint_topk(series: dict, title: str, out_dir: Path, token_classes: int) -> Path:
    torch_p = _softmax(series["joint_logits_torch"][:, :token_classes])
    exported_p = _softmax(series["joint_logits_exported"][:, :token_classes])
    order = np.argsort(-torch_p, axis=-1)[:, :TOP_K]  # Torch's top-k tokens per frame
    torch_top = np.take_along_axis(torch_p, order, axis=-1)
    exported_top = np.take_along_axis(exported_p, order, axis=-1)
    plt, fig, (dist, top, bottom) = _figure(3)
    ranks = np.arange(1, TOP_K + 1)
    width = 0.38
    dist.bar(ranks - width / 2, torch_top.mean(0), width, yerr=torch_top.std(0), label="Torch", color="black",
             alpha=0.7, capsize=2)
    dist.bar(ranks + width / 2, exported_top.mean(0), width, yerr=exported_top.std(0), label="exported joint",
             alpha=0.7, capsize=2)
    dist.set_xticks(ranks)
    dist.set_xlabel("rank of the token in Torch's distribution (mean ± std over frames)")
    dist.set_ylabel("token probability")
    dist.legend(loc="upper right", fontsize=8)
    exported = {"joint": series["joint_l2_exported"]}
    _torch_vs_exported(top, series["joint_l2_torch"], exported, "L2 of logits", "encoder frame")
    _delta(bottom, series["joint_l2_torch"], exported, "encoder frame")
    return _save(plt, fig, title, f"Joint: top-{TOP_K} token probabilities and logit L2 per frame",
                 out_dir / "joint_topk_l2.png")


def decisions(series: dict, title: str, out_dir: Path) -> Path:
    torch_tokens, exported_tokens = series["decision_token_torch"], series["decision_token_exported"]
    agree = torch_tokens == exported_tokens
    frames = np.arange(torch_tokens.size)
    plt, fig, (tokens, probs) = _figure(2)
    tokens.scatter(frames, torch_tokens, s=28, facecolors="none", edgecolors="black", label="Torch")
    tokens.scatter(frames[agree], exported_tokens[agree], s=8, color="tab:green", label="joint_decision, agrees")
    tokens.scatter(frames[~agree], exported_tokens[~agree], s=14, color="tab:red", marker="x",
                   label="joint_decision, differs")
    tokens.set_title(f"token agreement {agree.mean():.1%} ({int((~agree).sum())} of {agree.size} frames differ)",
                     fontsize=9)
    tokens.set_ylabel("token id")
    tokens.set_xlabel("encoder frame")
    tokens.legend(loc="upper right", fontsize=8)
    _torch_vs_exported(probs, series["decision_prob_torch"], {"joint_decision": series["decision_prob_exported"]},
                       "token probability", "encoder frame")
    return _save(plt, fig, title, "Joint decision: token agreement and token probability",
                 out_dir / "joint_decision.png")


def parity_plots(series: dict, title: str, out_dir: Path, token_classes: int) -> list[Path]:
    """Every parity plot whose series the run produced (a component not exported draws nothing)."""
    has = lambda *names: all(n in series for n in names)  # noqa: E731
    drawn = []
    for ready, draw in (
        (has("mel_torch", "mel_exported"), lambda: mel_composite(series, title, out_dir)),
        (has("encoder_l2_torch") or has("mel_encoder_l2_torch"), lambda: encoder_l2(series, title, out_dir)),
        (has("decoder_l2_torch", "decoder_l2_exported"), lambda: decoder_steps(series, title, out_dir)),
        (has("joint_logits_torch", "joint_logits_exported", "joint_l2_torch"),
         lambda: joint_topk(series, title, out_dir, token_classes)),
        (has("decision_token_torch", "decision_token_exported"), lambda: decisions(series, title, out_dir)),
    ):
        if ready:
            drawn.append(draw())
    return drawn


def latency_title(block: dict, model: str) -> str:
    """Host, OS, backend (labelled as executor timings where they are), compute units, versions."""
    host, versions = block["host"], block["versions"]
    backend = block["backend"] + (" — MIL executor timings, not Core ML" if block["backend"] == "mil" else "")
    return (f"{model} · {backend} · {block['compute_units']} · {block['compute_precision']} · "
            f"{host['os']} ({host['machine']}, {host['cpus']} CPUs, Torch threads {block['threads']['torch']}) · "
            + ", ".join(f"{k} {v}" for k, v in versions.items()))


def _paired_bars(ax, names: list[str], sides: list[tuple[str, list[dict], str]], ylabel: str) -> None:
    """Bars of the median per side with the std as error bars; log scale, labels on the bars."""
    x = np.arange(len(names))
    width = 0.8 / len(sides)
    for i, (label, stats, color) in enumerate(sides):
        medians = [s["median"] for s in stats]
        bars = ax.bar(x + (i - (len(sides) - 1) / 2) * width, medians, width, yerr=[s["std"] for s in stats],
                      capsize=3, label=label, color=color, alpha=0.85)
        ax.bar_label(bars, labels=[f"{m:.3g}" for m in medians], fontsize=7, padding=2)
    ax.set_xticks(x, names, rotation=15, ha="right")
    ax.set_yscale("log")
    ax.set_ylabel(ylabel)
    ax.margins(y=0.25)
    ax.legend(loc="upper right", fontsize=8)


def _speedup_bars(ax, names: list[str], speedups: list[float], ylabel: str) -> None:
    colors = ["tab:green" if s >= 1 else "tab:red" for s in speedups]
    bars = ax.bar(names, speedups, color=colors, alpha=0.85)
    ax.bar_label(bars, labels=[f"{s:.2f}×" for s in speedups], fontsize=8, padding=2)
    ax.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
    ax.set_ylabel(ylabel)
    ax.set_yscale("log")
    times = __import__("matplotlib.ticker", fromlist=["FuncFormatter"]).FuncFormatter(lambda v, _: f"{v:.3g}×")
    ax.yaxis.set_major_formatter(times)
    ax.yaxis.set_minor_formatter(times)
    ax.tick_params(axis="y", which="minor", labelsize=7)
    ax.margins(y=0.25)
    ax.tick_params(axis="x", rotation=15)


def latency_plots(block: dict, model: str, out_dir: Path) -> list[Path]:
    """Latency summary, speedup, fused against separate, fused speedup."""
    title = latency_title(block, model)
    backend = "executor" if block["backend"] == "mil" else block["backend"]
    rows = {**block["components"], **{f"end to end ({k})": v for k, v in block["end_to_end"].items()}}
    drawn = []
    if rows:
        names = list(rows)
        plt, fig, (ax,) = _figure(1, height=4.2)
        _paired_bars(ax, names, [("Torch CPU", [rows[n]["torch_ms"] for n in names], "dimgray"),
                                 (f"exported ({backend})", [rows[n]["backend_ms"] for n in names], "tab:blue")],
                     f"ms per call (median ± std of {block_runs(rows)} runs)")
        drawn.append(_save(plt, fig, title, "Latency per component, Torch against the exported package",
                           out_dir / "latency_summary.png"))
        plt, fig, (ax,) = _figure(1, height=3.6)
        _speedup_bars(ax, names, [rows[n]["speedup"] for n in names], f"speedup (Torch / {backend}, medians)")
        drawn.append(_save(plt, fig, title, "Speedup of the exported packages over Torch",
                           out_dir / "latency_speedup.png"))
    fused = block["fused"]
    if fused:
        names = list(fused)
        plt, fig, (ax,) = _figure(1, height=3.8)
        _paired_bars(ax, names, [("separate packages", [fused[n]["separate_ms"] for n in names], "tab:orange"),
                                 ("fused package", [fused[n]["fused_ms"] for n in names], "tab:blue")],
                     f"ms per call ({backend}, median ± std)")
        drawn.append(_save(plt, fig, title, "Fused packages against their parts run in sequence "
                           "(mel_encoder vs preprocessor→encoder; joint_decision vs joint + host decision)",
                           out_dir / "latency_fused_vs_separate.png"))
        plt, fig, (ax,) = _figure(1, height=3.2)
        _speedup_bars(ax, names, [fused[n]["speedup"] for n in names], "speedup (separate / fused, medians)")
        drawn.append(_save(plt, fig, title, "Speedup of fusing", out_dir / "latency_fused_speedup.png"))
    return drawn


def block_runs(rows: dict) -> str:
    runs = sorted({entry["runs"] for entry in rows.values()})
    return "/".join(str(r) for r in runs)


QUANTIZE_DIR = Path("plots") / "quantize"
FUSED_COMPONENTS = ("mel_encoder", "joint_decision", "joint_decision_single_step")


def _variant_bars(ax, summary: dict, components: list[str], metric: str, ylabel: str, fmt: str = "{:.3g}",
                  log: bool = False) -> None:
    """Grouped bars: one group per component, one bar per variant."""
    variants = [v for v, entry in summary.items() if not entry.get("error")]
    x = np.arange(len(components))
    width = 0.85 / max(1, len(variants))
    cmap = __import__("matplotlib").colormaps["tab10"]
    for i, variant in enumerate(variants):
        values = [summary[variant]["components"].get(c, {}).get(metric) for c in components]
        heights = [np.nan if v is None else v for v in values]
        ax.bar(x + (i - (len(variants) - 1) / 2) * width, heights, width, label=variant, color=cmap(i % 10))
    ax.set_xticks(x, components, rotation=15, ha="right")
    ax.set_ylabel(ylabel)
    if log:
        ax.set_yscale("log")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), title="variant", title_fontsize=7)


def quantization_plots(summary: dict, title: str, out_dir: Path) -> tuple[list[Path], list[str]]:
    """Per-component quality, size, compression, latency and compile time; the fused packages'
    quality, size, compression and latency; quality against size. Returns the plots and a line
    per plot that could not be drawn (no such measurement here)."""
    built = [v for v, e in summary.items() if not e.get("error")]
    if not built:
        return [], ["no variant was built"]
    components = list(summary[built[0]]["components"])
    drawn, skipped = [], []
    per_component = (("quality", "quality (1 − ‖ref − q‖ / ‖ref‖)", "quantize_quality.png", False),
                     ("size_mb", "package size (MB)", "quantize_size.png", True),
                     ("compression_ratio", "compression ratio (uncompressed / compressed)", "quantize_compression.png",
                      False),
                     ("latency_ms", "latency (ms, median)", "quantize_latency.png", True),
                     ("compile_ms", "Core ML compile time (ms)", "quantize_compile_time.png", True))
    for metric, label, name, log in per_component:
        if not any(summary[v]["components"][c].get(metric) is not None for v in built for c in components):
            skipped.append(f"{name}: no {metric} measured"
                           + (" (Core ML compiles only on macOS)" if metric == "compile_ms" else
                              " (timing off: --runs 0)" if metric == "latency_ms" else ""))
            continue
        plt, fig, (ax,) = _figure(1, height=4.0)
        _variant_bars(ax, summary, components, metric, label, log=log)
        if metric == "quality":
            ax.set_ylim(0, 1.05)
            ax.axhline(0.95, color="grey", linestyle="--", linewidth=0.8)
        drawn.append(_save(plt, fig, title, f"Per component: {label}", out_dir / name))
    fused = [c for c in FUSED_COMPONENTS if c in components]
    if fused:
        metrics = [m for m in ("quality", "size_mb", "compression_ratio", "latency_ms")
                   if any(summary[v]["components"][c].get(m) is not None for v in built for c in fused)]
        plt, fig, axes = _figure(len(metrics), height=2.8)
        for ax, metric in zip(axes, metrics):
            _variant_bars(ax, summary, fused, metric, metric, log=metric in ("size_mb", "latency_ms"))
            if ax is not axes[0]:
                ax.get_legend().remove()
        drawn.append(_save(plt, fig, title, "Fused packages: quality, size, compression, latency",
                           out_dir / "quantize_fused.png"))
    plt, fig, (ax,) = _figure(1, height=4.6)
    cmap = __import__("matplotlib").colormaps["tab10"]
    markers = "osD^v<>pPX*"
    for i, variant in enumerate(built):
        for j, component in enumerate(components):
            entry = summary[variant]["components"][component]
            ax.scatter(entry["size_mb"], entry["quality"], color=cmap(i % 10), marker=markers[j % len(markers)],
                       s=40, label=variant if j == 0 else None)
    for j, component in enumerate(components):
        ax.scatter([], [], color="grey", marker=markers[j % len(markers)], label=component)
    ax.set_xscale("log")
    ax.set_xlabel("package size (MB, log)")
    ax.set_ylabel("quality")
    ax.set_ylim(min(0.9, ax.get_ylim()[0]), 1.01)
    ax.axhline(0.95, color="grey", linestyle="--", linewidth=0.8)
    ax.legend(fontsize=7, ncol=2, loc="center left", bbox_to_anchor=(1.01, 0.5))
    drawn.append(_save(plt, fig, title, "Quality against size: each point a component of a variant",
                       out_dir / "quantize_quality_vs_size.png"))
    return drawn, skipped


# Data-set evaluation (validation.evaluation): per-utterance WER of the export against NeMo's on the
# same windows, the distribution of their differences, and the gap taken apart.
EVALUATION_DIR = Path("plots") / "evaluation"


def evaluation_plots(block: dict, records: list[dict], title: str, out_dir: Path) -> tuple[list[Path], list[str]]:
    """The plots, and a line for each one that cannot be drawn (no reference texts)."""
    drawn, skipped = [], []
    scored = [r for r in records if "wer" in r]
    exports = list(block["agreement_with_nemo_windowed"])
    if not scored:
        skipped.append("per-utterance WER and its differences: no utterance has a reference text")
    else:
        plt, fig, (ax,) = _figure(1, height=5.0)
        reference = np.array([100 * r["wer"]["nemo_windowed"]["wer"] for r in scored])
        top = max(1.0, float(reference.max()))
        for label in exports:
            values = np.array([100 * r["wer"][label]["wer"] for r in scored])
            top = max(top, float(values.max()))
            ax.scatter(reference, values, s=14, alpha=0.6, label=f"{label} ({len(values)} utterances)")
        ax.plot([0, top], [0, top], color="grey", linewidth=0.8, label="equal WER")
        ax.set_xlabel("NeMo on the same windows: WER per utterance (%)")
        ax.set_ylabel("export: WER per utterance (%)")
        ax.legend(fontsize=8, loc="upper left")
        drawn.append(_save(plt, fig, title, "Per-utterance WER, export against NeMo", out_dir / "wer_scatter.png"))

        plt, fig, (ax,) = _figure(1, height=3.4)
        for label in exports:
            differences = [100 * (r["wer"][label]["wer"] - r["wer"]["nemo_windowed"]["wer"]) for r in scored]
            ax.hist(differences, bins=41, alpha=0.6, label=f"{label}: {sum(d != 0 for d in differences)} of "
                                                           f"{len(differences)} utterances differ")
        ax.axvline(0.0, color="grey", linewidth=0.8)
        ax.set_xlabel("export WER − NeMo WER on the same windows, per utterance (points)")
        ax.set_ylabel("utterances")
        ax.legend(fontsize=8)
        drawn.append(_save(plt, fig, title, "Per-utterance WER differences", out_dir / "wer_differences.png"))

    parts = block["decomposition_points"]
    if parts["model"] is None:
        skipped.append("WER decomposition: no utterance has a reference text")
    else:
        plt, fig, (ax,) = _figure(1, height=3.6)
        names = ["model\n(NeMo, whole utterances,\nagainst the text)", "windowing\n(NeMo on windows\n− NeMo whole)",
                 *[f"export numerics\n({label} − NeMo\non the same windows)" for label in exports]]
        values = [parts["model"], parts["windowing"], *[parts["export"][label] for label in exports]]
        bars = ax.bar(names, values, color=["#4c72b0", "#dd8452", *["#55a868"] * len(exports)])
        ax.bar_label(bars, labels=[f"{v:+.2f}" if i else f"{v:.2f}" for i, v in enumerate(values)], fontsize=8)
        ax.axhline(0.0, color="grey", linewidth=0.8)
        ax.set_ylabel("WER points")
        ax.tick_params(axis="x", labelsize=8)
        drawn.append(_save(plt, fig, title, "Where the WER comes from", out_dir / "wer_decomposition.png"))
    return drawn, skipped

"""What each ``parakeet-coreml`` command does, once its arguments are parsed (``cli.main``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from cli.inputs import read_convert_dir, report_dir_of, strategy_list
from exporters.components import (
    FAMILIES,
    LATER_CHUNKS,
    STREAMING_COMPONENTS,
    ExportOptions,
    StreamingDims,
    decode_packages,
    get_components,
)
from exporters.export import ORIGINS_FILE, Exporter
from exporters.quantize import GivenExports, check_against_model, parse_variant, read_recipe, variant_table
from exporters.sources import ModelSource
from exporters.streaming import STREAMING_MODE, as_exported, mel_chunks, streaming_dims
from exporters.wrappers import model_dims
from infra.cache import ExportCache
from infra.console import print_progress, print_result, progress_bar
from infra.errors import UserError
from infra.publish import publish, staged_output
from infra.settings import config_path
from reports.evaluation import evaluation_dir, write_evaluation
from reports.kinds import EvaluationContext, QuantizationContext
from reports.latency import write_latency
from reports.metadata import ARRAYS_GLOB, earlier_blocks, replaced_note, update_metadata
from reports.neural_engine import describe_placement, write_placement
from reports.parity import ParityReport, parity_context
from reports.plots import RANGE_DIR, Caption, range_plot
from reports.quantization import SUMMARY, VARIANT_METADATA, write_quantization
from reports.streaming import run_label, streaming_block, streaming_context, write_streaming
from runtimes.base import BackendUnavailable, resolve_backend
from runtimes.coreml import compute_plan_devices
from runtimes.loader import LoadedPredictors, load_predictor
from runtimes.mil.model import MILModel
from validation.audio import parity_clips, read_audio, synthetic_speech
from validation.checks import ParityRunner
from validation.evaluation import (
    STREAMED,
    WINDOWED,
    PaceBook,
    decoders_for,
    evaluate,
    recordings,
    streaming_decoders_for,
    token_text,
    windowed_decoders_for,
)
from validation.held_out import (
    TranscriptMemo,
    held_out_evaluation,
    held_out_unusable,
    open_data_set,
    transcript_memo,
)
from validation.journal import JOURNAL, package_identity
from validation.neural_engine import agreement, predict_package
from validation.packages import (
    DEFAULT_CONVERT_DIR,
    DEFAULT_REPORT_DIR,
    KNOWN,
    METADATA,
    check_contract,
    check_family,
    find_packages,
    parse_named,
    provenance,
    read_interface,
    settle_by_interface,
)
from validation.quantization import QuantizationSweep, held_out_entry
from validation.ranges import describe_ranges, package_ranges, ranges_block
from validation.recipe_search import MAX_TRIES, RECIPE_FILE, SEARCHED, check_schemes, search_recipe, try_of
from validation.sensitivity import PROFILED, profile_variant
from validation.streaming import (
    COMPONENT_VALUES,
    end_of_utterance_id,
    offline_tokens,
    stream_audio,
    stream_parity,
    stream_predicts,
)
from validation.timestamps import word_timer
from validation.timing import all_cases, environment, flagged, latency_block, measure
from validation.tolerances import (
    DEFAULT_HELD_OUT_VARIANT,
    HELD_OUT_GATES,
    SEARCH_GATES,
    SEARCH_GATES_WITHOUT_HELD_OUT,
    gate_failures,
    load_gates,
    load_tolerances,
)
from validation.windowing import STRATEGIES


def component_list(values: list[str]) -> list[str]:
    """``["a,b", "c"]`` -> ``["a", "b", "c"]``."""
    return [name for value in values for name in value.split(",") if name]


def run_convert(args) -> int:
    source = ModelSource.from_options(args.nemo_path, args.model_id, args.preset)
    names = [c.name for c in get_components(component_list(args.components or []))] if args.components else None
    options = ExportOptions(args.compute_precision, args.compute_units, args.minimum_deployment_target,
                            flexible_audio=args.flexible_audio, chunk_ms=args.chunk_ms)
    if args.cache_state and names:
        raise UserError("--cache-state picks the later chunks' package of the default set; with --components, name "
                          "encoder_streaming_state (or encoder_streaming) among them instead")
    earlier = ["export there (its packages, vocabulary and metadata.json with any reports in it)"] \
        if (args.output_dir / METADATA).is_file() else []
    with staged_output(args.output_dir) as staging:
        exporter = Exporter(source, options, ExportCache(args.cache_dir))
        if args.cache_state and exporter.streaming_dims is None:
            raise UserError(f"--cache-state: {source.describe()} is not a cache-aware model: it has no streaming "
                              "caches to keep as states")
        exported = exporter.export_all(names, steps=progress_bar("convert", "component"), cache_state=args.cache_state)
        for e in exported:
            try:
                exporter.write_package(e, staging / e.package.name)
            except FileNotFoundError:  # its cache entry vanished since it was found: build it again
                print_progress(f"{e.name}: its cache entry {e.entry.path} vanished; exporting it again")
                shutil.rmtree(staging / e.package.name, ignore_errors=True)
                exporter.write_package(exporter.export(get_components([e.name])[0]), staging / e.package.name)
        shutil.copyfile(exporter.vocabulary, staging / exporter.vocabulary.name)
        metadata = exporter.metadata(exported, written_to=staging)
        (staging / "metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")
        publish(staging, args.output_dir, stale=lambda p: p.match(ARRAYS_GLOB))  # the replaced reports' arrays
    total = sum(c["size_bytes"] for c in metadata["components"].values()) / 1e6
    print_result(f"wrote {len(exported)} package(s), {total:.1f} MB, {exporter.vocabulary.name} and metadata.json to "
                 f"{args.output_dir}" + replaced_note(earlier))
    return 0


def read_inputs(args, option: str = "--output-dir"):
    """(description, packages, model source, report directory) of a convert directory
    (``option``), or of a package set (``--packages``/``--component`` with a model source)."""
    directory = getattr(args, option.removeprefix("--").replace("-", "_"))
    package_set = args.packages is not None or bool(args.components)
    sources = [o for o, v in (("--nemo-path", args.nemo_path), ("--model-id", args.model_id),
                              ("--preset", args.preset)) if v]
    if not package_set:
        if sources:
            raise UserError(f"{sources[0]} goes with --packages or --component; a convert directory ({option}) "
                              "records its own model source")
        if directory is None:
            raise UserError(f"give {option} DIR (written by convert) or --packages DIR with a model source")
        description, packages, source = read_convert_dir(directory, option)
        return description, packages, source, report_dir_of(args, directory, option)
    if directory is not None:
        raise UserError(f"give {option} or --packages/--component, not both")
    description, packages, source = read_package_set(args)
    return description, packages, source, report_dir_of(args, DEFAULT_REPORT_DIR, "--report-dir")


def read_package_set(args):
    """Packages another converter wrote, found by name and held to the contract before anything
    runs; the description the reports are written from says where they came from."""
    source = ModelSource.from_options(args.nemo_path, args.model_id, args.preset)
    packages, unmatched = find_packages(args.packages, parse_named(args.components))
    cache = ExportCache(args.cache_dir)
    interfaces = {name: read_interface(path) for name, path in packages.items()}
    exporter = _package_set_exporter(source, cache, interfaces)
    for note in settle_by_interface(packages, interfaces, exporter.dims):
        print_progress(f"--packages: {note}")
    check_family(packages, exporter.dims, source.describe())
    interfaces = check_contract(packages, exporter.dims, exporter.streaming_dims, interfaces)
    packages = {name: packages[name] for name in KNOWN if name in packages}
    for name in unmatched:
        print_progress(f"--packages: {name} names no component; left out (name it with --component NAME=PATH)")
    origin = provenance(args.packages, packages, interfaces, unmatched)
    description = exporter.metadata([])
    description.pop("host")
    # the encoders' precision decides the rules (float32: the whole transcript must match)
    read = [interfaces[name].precision for name in ("encoder", "mel_encoder", "encoder_streaming_first")
            if interfaces.get(name) is not None and interfaces[name].precision is not None]
    description["coreml"] = {"compute_units": "ALL", "compute_precision": "float32" if read and all(
        p == "float32" for p in read) else "float16", "package_precision": read[0] if read else
        "not read (no .mlpackage encoder): checked as float16"}
    description["components"] = {name: {"path": str(path.resolve()), "size_bytes": origin["components"][name][
        "size_bytes"]} for name, path in packages.items()}
    description["packages"] = origin
    print_progress(f"{len(packages)} package(s) from {args.packages or 'the --component options'}: "
                   + ", ".join(f"{name}={path.name}" for name, path in packages.items()))
    return description, packages, source


def _package_set_exporter(source: ModelSource, cache: ExportCache, interfaces: dict) -> Exporter:
    """The model's facts for a package set: with streaming packages, at the chunk whose mel frames
    their ``mel`` input takes (one of the chunk sizes the model was trained for)."""
    exporter = Exporter(source, ExportOptions(), cache)
    streaming = {name: i for name, i in interfaces.items() if name in STREAMING_COMPONENTS and i is not None}
    if not streaming:
        return exporter
    if exporter.streaming_dims is None:
        raise UserError(f"{', '.join(streaming)}: streaming packages, but {source.describe()} is not a cache-aware "
                          "model; give the cache-aware model they were converted from")
    frames = {name: next((s.shape[-1] for s in i.inputs if s.name == "mel"), None) for name, i in streaming.items()}
    tried = []
    for ms in exporter.model_info["chunk_sizes_ms"]:
        candidate = Exporter(source, ExportOptions(chunk_ms=int(ms)), cache)
        expected = {name: next(s.shape[-1] for s in STREAMING_COMPONENTS[name].inputs(candidate.streaming_dims)
                               if s.name == "mel") for name in streaming}
        if expected == frames:
            return candidate
        tried.append(f"{ms} ms: {', '.join(f'{n} {f}' for n, f in expected.items())}")
    raise UserError(f"streaming packages whose mel takes {', '.join(f'{n} {f}' for n, f in frames.items())} frames "
                      f"fit none of {source.describe()}'s chunks ({'; '.join(tried)})")


def _package_loader(args, description: dict, packages: dict):
    """(backend, compute units, loader) for a convert directory's packages; a backend this host
    lacks is an error that names the one that runs everywhere."""
    backend = resolve_backend(args.backend)
    compiled = [p.name for p in packages.values() if p.suffix == ".mlmodelc"]
    if compiled and backend != "coreml":
        raise UserError(f"{', '.join(compiled)}: compiled .mlmodelc bundles run only on Core ML (macOS, "
                          f"--backend coreml); the {backend} backend reads .mlpackage programs: give those instead")
    units = args.compute_units or description["coreml"]["compute_units"]
    load = LoadedPredictors(backend, units)
    try:
        load(next(iter(packages.values())))
    except BackendUnavailable as e:
        raise UserError(f"--backend {backend}: {e}; use --backend mil to run this project's executor") from None
    return backend, units, load


def run_compare(args) -> int:
    description, packages, source, directory = read_inputs(args)
    streams = any(name in packages for name in STREAMING_COMPONENTS)
    # (a description written before families were recorded is a TDT or RNN-T model's)
    rnnt = description.get("family", "tdt" if description.get("durations") else "rnnt") == "rnnt"
    if rnnt and not streams:
        raise UserError(f"{source.describe()} has no TDT durations (an RNNT model): its packages convert, but "
                          "compare checks decisions and transcripts with TDT's durations and checks only an RNNT "
                          "model's streaming packages (encoder_streaming_first and encoder_streaming or "
                          "encoder_streaming_state), of which there are none here")
    precision = description["coreml"]["compute_precision"]
    tolerances = load_tolerances(config_path(args.config), args.tolerances, args.psnr_floor)
    if args.audio is not None:
        read_audio(args.audio)  # refuse unusable audio before any model is loaded
    backend, units, load = _package_loader(args, description, packages)
    print_progress(f"loading {source.describe()} ...")
    model = as_exported(source.load(), description)
    dims = model_dims(model, description["max_audio_seconds"])
    cache = ExportCache(args.cache_dir)
    clips = parity_clips(cache, dims, args.audio)
    if rnnt:
        print_progress("an RNNT model: the offline packages' checks (decisions and transcripts with TDT's durations) "
                       "are skipped; the streaming packages are checked chunk by chunk")
        return 0 if _compare_streaming(model, description, packages, load, clips[0], backend, tolerances,
                                       directory) else 1
    for clip in clips:
        for note in clip.notes:
            print_progress(f"{clip.name}: {note}")
    context = parity_context(args.backend, backend, precision, units, tolerances)
    report = ParityReport(description, context, precision, clips[0].name)
    def origins(name):
        """The op origins convert's cache entry recorded beside the package, if still cached."""
        entry = cache.lookup(description["components"][name].get("cache_key", ""))
        return json.loads((entry.path / ORIGINS_FILE).read_text()) if entry else None

    runner = ParityRunner(model, dims, packages, load, tolerances, backend, precision, origins=origins)
    fed: dict[str, list[dict]] = {}  # component -> what it was fed on each clip, for the range check
    for i, clip in enumerate(progress_bar("parity", "clip")(clips, len(clips)), 1):
        run = runner.run(clip)
        for name, inputs in run.inputs.items():
            fed.setdefault(name, []).append(inputs)
        report.add(precision, run.record(with_series=i == 1))
        failed = run.failed()
        print_progress(f"[{i}/{len(clips)}] {clip.name}: {len(run.results) - len(failed)} of {len(run.results)} "
                       f"checks passed" + "".join(f"\n{r.message()}" for r in failed))
    placements = {name: predict_package(path, args.chip) for name, path in packages.items()}
    ranges = _fp16_ranges(description, packages, fed, origins, load)
    # timed after the checks: a failed check is told first, and timing waits for none
    latency = None
    if args.runs:
        cases = all_cases(model, dims, packages, load, lambda p: load_predictor(p, backend, units), clips[0])
        print_progress(f"timing {len(cases)} case(s) on {clips[0].name}: a cold start, then {args.warmup} warm-up "
                       f"and {args.runs} timed rounds, the two sides in turn")
        audio_seconds = clips[0].length / dims.sample_rate
        latency = latency_block(measure(progress_bar("timing", "case")(cases, len(cases)), args.runs, args.warmup,
                                        audio_seconds, backend, print_progress),
                                environment(backend, units, precision), audio_seconds)
    earlier = earlier_blocks(directory, ["validation", "neural_engine", "fp16_range"]
                             + ["latency"] * (latency is not None))
    path, plots = report.write(directory)
    agreements = None
    if backend == "coreml":  # Core ML's own compute plan beside the prediction (CPU_AND_NE: where it could go)
        agreements = {name: agreement(placements[name], compute_plan_devices(path)) for name, path in packages.items()}
    _, placement_plots, placement = write_placement(directory, description, placements, agreements)
    plots += placement_plots
    update_metadata(directory, description, fp16_range=ranges)
    caption = Caption.of(description, f"fp32 shadow on {backend}, on the parity inputs")
    plots += [range_plot(name, entry, caption, directory / RANGE_DIR) for name, entry in ranges["components"].items()]
    if latency is not None:
        _, latency_plotted = write_latency(directory, description, latency)
        plots += latency_plotted
    streaming_passed = True
    if streams:
        streaming_passed = _compare_streaming(model, description, packages, load, clips[0], backend, tolerances,
                                              directory)
    status = json.loads(path.read_text())["validation"]["status"]
    noisy = flagged(latency) if latency else []
    blocks = "validation, neural_engine, fp16_range" + (" and latency blocks" if latency else " blocks")
    print_result(f"parity {status} on {backend} ({context['values_from']})\n"
                 f"  Neural Engine of {args.chip}, predicted:" + "".join(f"\n    {line}"
                                                                       for line in describe_placement(placement))
                 + f"\n  fp16 range on the parity inputs: {ranges['status']}" + "".join(
                     f"\n    {line}" for line in describe_ranges(ranges))
                 + f"\n  {blocks} in {path}, {len(plots)} plots in {directory / 'plots'}"
                 + replaced_note([f"{b} block" for b in earlier])
                 + (f"\n  {len(noisy)} latency case(s) flagged, read them with care:" + "".join(
                     f"\n    {line}" for line in noisy) if noisy else ""))
    return 0 if status == "passed" and streaming_passed and ranges["status"] == "passed" else 1


def _fp16_ranges(description: dict, packages: dict[str, Path], fed: dict[str, list[dict]], origins, load) -> dict:
    """Each fp16 (or mixed) package beside its fp32 shadow on what the parity checks fed it (every clip: the
    speech, silence, DC, full-scale clipping, noise): the ``fp16_range`` block."""
    reports, skipped = {}, {}
    for name, inputs in progress_bar("fp16 range", "package")(list(fed.items()), len(fed)):
        precision = description["components"].get(name, {}).get("compute_precision")
        if precision == "float32":
            skipped[name] = "a float32 package: nothing is rounded to fp16"
            continue
        loaded = load(packages[name])  # on the mil backend, the executor the checks ran: not read twice
        reports[name] = package_ranges(loaded if isinstance(loaded, MILModel) else packages[name], inputs)
    return ranges_block(reports, lambda name: origins(name) or {}, skipped)


def _shortened(text: str, limit: int = 400) -> str:
    """A transcript for the terminal: an untrained model's can run to thousands of characters (the
    block keeps every token)."""
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


def packages_streaming_dims(model, description: dict) -> StreamingDims:
    """``model`` set to the packages' chunk, and the chunk's sizes, which must be the packages'."""
    recorded = description["streaming"]
    dims = streaming_dims(model, recorded["chunk_ms"])
    expected = StreamingDims.from_dict({k: recorded[k] for k in dims.as_dict()})
    if dims != expected:
        raise UserError("encoder_streaming: the model streams chunks of other sizes than the packages were exported "
                          f"for ({dims} against {expected}); convert it again")
    return dims


def _compare_streaming(model, description: dict, packages: dict[str, Path], load, clip, backend: str, tolerances,
                       directory: Path) -> bool:
    """The streaming encoders chunk by chunk against NeMo's streaming, at the packages' precision,
    on ``clip`` (the user's recording, else the synthetic speech) twice with pauses: once per
    later-chunk package present (caches as inputs and outputs, as states)."""
    recorded = description.get("streaming")
    variants = [later for later in LATER_CHUNKS if later in packages]
    if recorded is None or "encoder_streaming_first" not in packages or not variants:
        found = ", ".join(n for n in STREAMING_COMPONENTS if n in packages) or "no streaming package"
        raise UserError(f"streaming parity needs encoder_streaming_first, one of {' or '.join(LATER_CHUNKS)} and the "
                          f"streaming chunk sizes in metadata.json; found {found}"
                          f"{'' if recorded else ' and no chunk sizes'} (convert them from a cache-aware model source)")
    dims = packages_streaming_dims(model, description)
    precision = description["coreml"]["compute_precision"]
    rate = int(description["sample_rate"])
    audio = stream_audio(clip.samples[:clip.length], rate)
    chunks = mel_chunks(model, audio)
    offline = offline_tokens(model, audio)
    window_dims, end_of_utterance = model_dims(model, description["max_audio_seconds"]), end_of_utterance_id(model)
    records, worst = {}, {}
    for later in variants:
        label = run_label(precision, later == "encoder_streaming_state")
        print_progress(f"streaming ({label}): {len(chunks)} chunks of {recorded['chunk_ms']} ms "
                       f"({audio.size / rate:.1f} s: {clip.name} twice, with pauses) through NeMo's cache-aware "
                       f"streaming and encoder_streaming_first, then {later}")
        predicts = stream_predicts({name: load(packages[name]) for name in ("encoder_streaming_first", later)})
        run = stream_parity(model, dims, predicts, chunks, tolerances, window_dims, exact=precision == "float32",
                            offline=offline, progress=progress_bar("streaming", "chunk"),
                            end_of_utterance=end_of_utterance)
        records[label] = run.record()
        worst[label] = {o: max(run.series(o)) for o in COMPONENT_VALUES}
        texts = {name: model.tokenizer.ids_to_text(tokens) if tokens else ""
                 for name, tokens in run.transcripts.items()}
        gap = records[label]["transcripts"]["nemo_streaming_edits_to_offline"]
        decisions = (f"host greedy TDT: the export's first {run.agreement.required_tokens} of "
                     f"{len(run.agreement.reference)} tokens required to be NeMo's, "
                     f"{'they are' if run.agreement.match else 'they are NOT'}; " if run.agreement else "")
        print_progress(f"streaming transcripts ({label}): {decisions}export {run.transcript_edits()} token edit(s) "
                       f"from NeMo's streaming decoding, NeMo streaming {gap} from NeMo offline (the model's own gap, "
                       "reported)" + "".join(f"\n  {name}: {_shortened(text)!r}" for name, text in texts.items()))
        eou = run.end_of_utterance
        print_progress(f"end of utterance ({label}): " + (
            "the model's tokenizer has no <EOU> piece" if eou is None else
            f"NeMo streaming {len(eou.reference)}, export {len(eou.exported)} emission(s) of token {eou.token}, "
            f"{'' if eou.reference == eou.exported else 'NOT '}at the same chunks and frames"
            f"{'' if eou.exact else ' (reported: required equal of fp32 packages)'}"))
    block = streaming_block(records, streaming_context(backend, f"{clip.name} twice, with pauses", tolerances))
    path, plot = write_streaming(directory, description, block)
    print_result(f"streaming {block['status']}: {len(chunks)} chunks, largest errors "
                 + "; ".join(f"{label}: " + ", ".join(f"{o} {v:.3g}" for o, v in errors.items())
                             for label, errors in worst.items())
                 + f"; streaming_validation block in {path}, plot {plot}"
                 + "".join(f"\nFAILED {line}" for line in block["failures"][:10]))
    return block["status"] == "passed"


def _evaluated_decodings(description: dict, packages: dict, streaming: bool) -> dict[str, list[str]]:
    """Decoding -> the packages it drives: every decoding of the model's family whose packages are
    all there (a hybrid's TDT and CTC side by side; one left out says so), or streamed the
    transducer's over the streaming packages; one error naming what is absent when none is whole."""
    family = FAMILIES[description.get("family", "tdt" if description.get("durations") else "rnnt")]
    if streaming:
        if description.get("streaming") is None:
            raise UserError("--streaming: metadata.json records no streaming chunk; convert the packages from a "
                              "cache-aware model source")
        later = next((name for name in LATER_CHUNKS if name in packages), LATER_CHUNKS[0])
        decodings = {family.decodings[0]: ["encoder_streaming_first", later, "decoder", "joint_decision_single_step"]}
    else:  # (an RNN-T model's offline decoding would need TDT's single-step joint, which it has not)
        decodings = {d: list(decode_packages(d)) for d in family.decodings}
    absent = {d: [name for name in names if name not in packages] for d, names in decodings.items()}
    if all(absent.values()):
        raise UserError(f"evaluate{' --streaming' if streaming else ''} decodes the {family.name} family's "
                        + " or ".join(f"{d} with {', '.join(names)}" for d, names in decodings.items())
                        + f"; absent: {', '.join(dict.fromkeys(n for names in absent.values() for n in names))} "
                        "(convert them with --components, or name them with --component NAME=PATH)")
    for decoding, names in absent.items():
        if names:
            print_progress(f"the {decoding} decoding is not evaluated: {', '.join(names)} absent")
    return {d: names for d, names in decodings.items() if not absent[d]}


def run_evaluate(args) -> int:
    strategy_names = strategy_list(args.strategy, args.streaming)
    description, packages, source, report_dir = read_inputs(args)
    decodings = _evaluated_decodings(description, packages, args.streaming)
    cache = ExportCache(args.cache_dir)
    options = ExportOptions(max_audio_seconds=description["max_audio_seconds"])
    dims = Exporter(source, options, cache, progress=lambda message: None).dims  # cached: no model load
    if args.manifest is not None:
        manifest, utterances, bad = open_data_set(args.manifest, cache, dims)
    else:
        manifest, utterances, bad = None, recordings(args.audio), []
    for line in bad:
        print_progress(f"skipped {line}")
    if not utterances:
        raise UserError(f"--manifest {args.manifest}: no line could be used ({len(bad)} skipped, above)")
    backend, units, load = _package_loader(args, description, packages)
    print_progress(f"loading {source.describe()} ...")
    model = as_exported(source.load(), description)
    passed = True
    for decoding, needed in decodings.items():
        if len(decodings) > 1:
            print_progress(f"{decoding} decoding ({', '.join(needed)}):")
        first = decoding == next(iter(decodings))
        passed &= _evaluate_decoding(
            args, description, source, report_dir, strategy_names, dims, cache, (manifest, utterances, bad),
            (backend, units, load), model, decoding, {"export": {name: packages[name] for name in needed}},
            block="evaluation" if first else f"evaluation_{decoding}")
    return 0 if passed else 1


def _evaluate_decoding(args, description, source, report_dir, strategy_names, dims, cache, data, loader, model,
                       decoding: str, exports: dict, block: str) -> bool:
    """One decoding's evaluation, written as ``block`` (its journal and plots named after it)."""
    manifest, utterances, bad = data
    backend, units, load = loader
    precision = description["coreml"]["compute_precision"]
    journal = JOURNAL if block == "evaluation" else JOURNAL.replace("evaluation", block)
    if args.streaming:
        paths, chunking = STREAMED, {"streaming": {**description["streaming"], "mode": STREAMING_MODE}}
        decoders = streaming_decoders_for(model, dims, packages_streaming_dims(model, description), exports, load)
        strategy, compared = STRATEGIES[strategy_names[0]], {}  # the default: streamed audio is not windowed
    else:
        strategy, *others = (STRATEGIES[name] for name in strategy_names)
        paths, chunking = WINDOWED, {"windows": strategy.describe(dims),
                                     **({"compared": {s.name: s.describe(dims) for s in others}} if others else {})}
        decoders = decoders_for(model, dims, exports, load, strategy, decoding)
        compared = {s.name: windowed_decoders_for(model, dims, exports, load, s, decoding) for s in others}
    result = evaluate(utterances, decoders, token_text(model), dims,
                      normalizer=args.normalizer, max_wer_difference=args.max_wer_difference / 100,
                      exact=["export"] if precision == "float32" else [], bad=bad, journal=report_dir / journal,
                      resume=args.resume, report=print_progress, progress=progress_bar("evaluate", "utterance"),
                      settings={"packages": {name: package_identity(path) for name, path in exports["export"].items()},
                                "backend": backend, "compute_units": units}, paths=paths,
                      strategy=strategy, compared=compared, timer=word_timer(model, dims),
                      paces=PaceBook(cache.root, {"model": source.key(), "backend": backend, "units": units,
                                                  "precision": precision, "streaming": args.streaming,
                                                  "strategies": strategy_names,
                                                  **({"decoding": decoding} if decoding == "ctc" else {})}))
    context = EvaluationContext.of(
        backend, units, precision, description=description, set=args.manifest or f"{len(utterances)} recording(s)",
        manifest=str(manifest) if manifest else None, normalizer=args.normalizer,
        max_wer_difference_points=args.max_wer_difference, versions=environment(backend, units, precision)["versions"],
        audio=[str(p) for p in args.audio or []], decoding=decoding, **chunking)
    written = result.block(context.block_context())
    earlier = [f"{b} block" for b in earlier_blocks(report_dir, [block])]
    earlier += [f"{journal} ({result.replaced} records; --resume keeps them)"] if result.replaced else []
    path, plots, skipped = write_evaluation(report_dir, description, written, result.records, block)
    for line in skipped:
        print_progress(f"plot not drawn: {line}")
    wer = written["wer"]
    if wer:
        print_result("WER " + ", ".join(f"{label} {100 * wer[label]['wer']:.2f}%" for label in wer)
                     + f" ({written['with_text']} utterances with text, {args.normalizer} normaliser)")
    parts = written["decomposition_points"]
    if parts["model"] is not None:
        print_result(f"model {parts['model']:.2f} points, {paths.middle} {parts[paths.middle]:+.2f}, "
                     f"export {parts['export']['export']:+.2f}")
    for name, summary in written.get("strategies", {}).items():
        near = summary.get("seam_losses", {}).get("export", {}).get("near_seams", {})
        print_result(f"strategy {name}: WER " + ", ".join(f"{label} {100 * t['wer']:.2f}%"
                                                          for label, t in summary["wer"].items())
                     + (f"; export errors near seams {100 * near['rate']:.1f}% of {near['words']} words"
                        if near.get("rate") is not None else ""))
    for line in written["failures"]:
        print_progress(f"FAILED {line}")
    print_result(f"evaluation ({decoding}) {written['status']}: {written['utterances']} utterance(s), "
                 f"{len(result.bad)} unreadable; {journal} and the {block} block in {path.parent}, {len(plots)} plots "
                 f"in {path.parent / evaluation_dir(block)}" + replaced_note(earlier))
    return written["status"] == "passed"


def chosen_variants(option: str, text: str | None, swept: list[str], default: tuple[str, ...] = ()) -> list[str]:
    """A list of variants given to ``option`` (``--held-out``, ``--sensitivity``): the variants
    named (each among those swept), none for ``none``, and without the option those of
    ``default`` that are swept."""
    if text is None:
        return [name for name in default if name in swept]
    if text == "none":
        return []
    named = component_list([text])
    strangers = [name for name in named if name not in swept]
    if strangers or not named:
        found = f"{', '.join(strangers)} not among the variants swept" if strangers else "names no variant"
        raise UserError(f"{option} {text!r}: {found}; expected some of: {', '.join(swept)}, or none")
    return named


def run_quantize(args) -> int:
    if args.output_dir is None and args.packages is None and not args.components:
        args.output_dir = DEFAULT_CONVERT_DIR
    description, packages, source, _ = read_inputs(args)
    given = "packages" in description  # a package set: its variants are built from the packages as found
    pyproject = config_path(args.config)
    table = variant_table(pyproject)
    for text in args.declared:
        name, sep, spec = text.partition("=")
        if not sep and Path(text).is_file():  # a recipe file (preflight: NAME=JSON or a file)
            variant = read_recipe(Path(text))
            table[variant.name] = variant
            continue
        if not sep or not name:
            raise UserError(f"--variant {text!r}: expected NAME=JSON")
        table[name] = parse_variant(name, spec, f"--variant {name}")
    names = list(table) if args.variants is None else component_list([args.variants])
    unknown = [n for n in names if n not in table]
    if unknown or not names:
        found = f"unknown variant(s) {', '.join(unknown)}" if unknown else "names no variant"
        raise UserError(f"--variants {args.variants!r}: {found}; expected one or more of: {', '.join(table)}")
    schemes = chosen_variants("--search", args.search, names)  # (never of a package set: preflight)
    if schemes and SEARCHED in table:
        raise UserError(f"--search names its recipe {SEARCHED!r}, and a variant of that name is declared; rename it")
    check_schemes([table[name] for name in schemes])
    gates = load_gates(pyproject, args.gates, [*table, *[SEARCHED] * bool(schemes)])
    held_out = chosen_variants("--held-out", args.held_out, names, (DEFAULT_HELD_OUT_VARIANT,))
    profiled = list(dict.fromkeys(chosen_variants("--sensitivity", args.sensitivity, names) + schemes))
    unmeasured = [f"{name}:{metric}" for name in names for metric in gates.get(name, {})
                  if metric in HELD_OUT_GATES and name not in held_out]
    if unmeasured:
        raise UserError(f"--gate {', '.join(unmeasured)}: word flips and WER are counted on the held-out set; add the "
                        f"variant(s) to --held-out (now: {', '.join(held_out) or 'none'})")
    lacking = [name for name in PROFILED if name not in packages]
    if schemes and lacking:
        raise UserError(f"--search weighs whole models, decoded as an app decodes them, and the convert folder lacks "
                        f"{', '.join(lacking)}; convert them too (--components)")
    if not given and args.output_root.resolve() == args.output_dir.resolve():
        raise UserError("--output-root must differ from --output-dir")
    had_summary = (args.output_root / SUMMARY).is_file()
    with staged_output(args.output_root, "--output-root") as staging:
        backend, units, load = _package_loader(args, description, packages)
        cache = ExportCache(args.cache_dir)
        model = as_exported(source.load(), description)
        dims = model_dims(model, description["max_audio_seconds"])
        clip = synthetic_speech(cache, dims)
        precision = description["coreml"]["compute_precision"]
        for variant in (table[name] for name in names):
            for note in check_against_model(variant, model):  # a recipe's layers, a block size: before any work
                print_progress(note)
        searched_on_set = _search_gates(model, dims, cache, args.manifest, gates) if schemes else False

        exports = GivenExports(packages) if given else Exporter(source, ExportOptions(
            precision, description["coreml"]["compute_units"],
            flexible_audio=description["coreml"].get("flexible_audio", False)), cache, progress=lambda message: None)
        sweep = QuantizationSweep(table, exports, list(packages), cache, load, dims, clip, backend=backend,
                                  compute_units=units, runs=args.runs, warmup=args.warmup, progress=print_progress)
        results = []
        for i, name in enumerate(progress_bar("quantize", "variant")(names, len(names)), 1):
            variant = table[name]
            target = variant.minimum_deployment_target
            sweep.base(target)
            print_progress(f"[{i}/{len(names)}] {name}: {variant.summary}"
                           + (f" (from an {target} export)" if target != "iOS17" and not given else ""))
            result = sweep(name)
            if result.error:
                print_progress(f"  {name}: not built: {result.error}")
            if name in held_out and not result.error:
                result.held_out = _held_out_wer(model, dims, cache, sweep.bases[target][0], result.packages, load,
                                                args.manifest)
                print_progress(f"  {name}: {describe_held_out(result.held_out)}")
            if name in profiled and not result.error:
                on_set = _group_held_out(sweep, name, model, dims, cache, load, args.manifest) \
                    if result.held_out and "skipped" not in result.held_out else None
                rows = profile_variant(sweep, name, progress_bar("sensitivity", "group"), on_set)
                print_progress(f"  {name}: {describe_profile(rows)}")
            results.append(result)
        search = None
        if schemes:
            search, searched = _search_recipe(sweep, schemes, model, dims, cache, load, args.manifest,
                                              gates[SEARCHED], searched_on_set)
            results += [searched] * (searched is not None)
        context = QuantizationContext.of(backend, units, precision, model=description["model"], clip=clip.name,
                                         runs=args.runs, warmup=args.warmup,
                                         packages=description["packages"] if given else None)
        summary_path, plots, skipped = write_quantization(staging, [r.record() for r in results], context.as_dict(),
                                                          gates, search)
        # the root is this run's: variant folders of earlier runs go, so the summary lists all there is
        replaced = publish(staging, args.output_root, stale=lambda p: (p / VARIANT_METADATA).is_file())
    verdict = json.loads((args.output_root / summary_path.name).read_text())["overall"]
    for line in skipped:
        print_progress(f"plot not drawn: {line}")
    for line in verdict["failures"]:
        print_progress(f"FAILED {line}")
    for line in verdict["flags"]:
        print_progress(f"FLAGGED {line}")
    if search is not None:
        print_progress(describe_search(search, args.output_root))
    print_result(f"quantization {verdict['status']}: {verdict['variants']} variant(s) in {args.output_root}, "
                 f"{verdict['passed']} passed, {verdict['failed']} failed, {verdict['not_gated']} not gated, "
                 f"{verdict['error']} not built; {len(plots)} plots in "
                 f"{plots[0].parent.relative_to(staging) if plots else 'none'}"
                 + replaced_note([f"run's {SUMMARY} and variants"] * had_summary
                                 + [f"variant folder(s) not swept now, removed: {', '.join(replaced)}"]
                                 * bool(replaced)))
    return 0 if verdict["status"] == "passed" else 1


def _search_gates(model, dims, cache, data_set: str, gates: dict) -> bool:
    """Set the searched recipe's gates: ``SEARCH_GATES`` under the user's ``--gate searched:...``;
    on a model too unsure for the held-out set (a seeded preset), the headline quality instead, and
    a held-out gate asked for is refused before any work. Returns whether the tries are weighed on
    the held-out set."""
    asked = gates.get(SEARCHED, {})
    unusable = held_out_unusable(model, dims, cache, data_set)
    if unusable is None:
        gates[SEARCHED] = {**SEARCH_GATES, **asked}
        return True
    measured_there = [metric for metric in asked if metric in HELD_OUT_GATES]
    if measured_there:
        raise UserError(f"--gate {SEARCHED}:{measured_there[0]} is measured on {data_set}, and this model cannot be "
                        f"held to it: {unusable}; gate the search on the clip instead (e.g. --gate {SEARCHED}:quality="
                        f"{SEARCH_GATES_WITHOUT_HELD_OUT['quality']})")
    gates[SEARCHED] = {**SEARCH_GATES_WITHOUT_HELD_OUT, **asked}
    return False


def _search_recipe(sweep: QuantizationSweep, schemes: list[str], model, dims, cache, load, data_set: str,
                   gates: dict, held_out: bool):
    """``search_recipe`` over the sweep: each try built and weighed as the sweep's variants are, and
    on the held-out set (NeMo's and the uncompressed export's transcripts made once) where the
    gates are measured there. Returns the search block and the recipe's result (None: nothing
    passed)."""
    memos = {}  # deployment target -> the transcripts that stay

    def check(variant, assignment):
        sweep.table[variant.name] = variant
        result = sweep(variant.name)
        if result.error:
            raise UserError(f"the search's {variant.name} could not be built: {result.error}")
        if held_out:
            target = variant.minimum_deployment_target
            result.held_out = _held_out_wer(model, dims, cache, sweep.bases[target][0], result.packages, load,
                                            data_set, memos.setdefault(target, transcript_memo(UNCOMPRESSED)),
                                            report=lambda line: None)  # the try's own line says it
        entry = result.as_dict()
        return try_of(variant.name, assignment, entry, gate_failures(SEARCHED, entry, {SEARCHED: gates}))

    print_progress(f"searching a recipe of {', '.join(schemes)} that passes "
                   + ", ".join(f"{metric} {'<=' if metric in HELD_OUT_GATES else '>='} {value}"
                               for metric, value in gates.items())
                   + (f" on {data_set}" if held_out else " (no held-out set: the model is too unsure)")
                   + f"; at most {MAX_TRIES} whole-model tries")
    said, sweep.progress = sweep.progress, lambda message: None  # a line per try, not per package
    try:
        search, recipe = search_recipe([sweep.table[name] for name in schemes],
                                       {name: sweep(name).sensitivity for name in schemes},
                                       list(sweep.bases[sweep.table[schemes[0]].minimum_deployment_target][0]),
                                       check, gates, report=lambda line: print_progress(f"  search {line}"))
    finally:
        sweep.progress = said
    block = {**search.as_dict(), "recipe": recipe.recipe() if recipe else None}
    if recipe is None:
        return block, None
    result = sweep.results[search.chosen]
    result.variant = recipe
    return block, result


def describe_search(block: dict, root: Path) -> str:
    """One line: the recipe found (its encoder's share of fp16, where its recipe file is) or what
    came closest."""
    tries = f"{len(block['tries'])} tries in {block['seconds']:.0f} s"
    if block["chosen"] is None:
        closest = block["closest"]
        return (f"search: no recipe met the gates ({tries}); closest: {closest['name']}, encoder "
                f"{100 * closest['encoder_fraction']:.0f}% of fp16, failed: {'; '.join(closest['failures'])}")
    chosen = next(t for t in block["tries"] if t["name"] == block["chosen"])
    return (f"search: {SEARCHED} ({block['chosen']}) passes with the encoder at "
            f"{100 * chosen['encoder_fraction']:.1f}% of fp16 ({tries}); recipe {root / SEARCHED / RECIPE_FILE} "
            "(read back with --variant)")


def _group_held_out(sweep: QuantizationSweep, name: str, model, dims, cache, load, data_set: str):
    """A profile's ``on_set`` for a variant evaluated on the set: each group's swapped programs on
    it, against NeMo's and the uncompressed export's transcripts, made once before any weight is
    swapped (the swapped programs stand at the uncompressed packages' paths)."""
    exports = sweep.bases[sweep.table[name].minimum_deployment_target][0]
    packages = {component: e.package for component, e in exports.items()}
    memo = transcript_memo(UNCOMPRESSED)
    print_progress(f"  {name}: transcribing {data_set} once without compression, to weigh each group on it ...")
    _held_out_wer(model, dims, cache, exports, packages, load, data_set, memo, report=lambda line: None)
    return lambda swapped: _held_out_wer(model, dims, cache, exports, packages, swapped, data_set, memo,
                                         report=lambda line: None, progress=lambda items, total: items)


def describe_profile(rows: list[dict]) -> str:
    """One line: how many groups were profiled and which cost the most."""
    worst = sorted(rows, key=lambda r: r["psnr_db"])[:3]
    on_set = [r for r in rows if r.get("flips") is not None]
    return (f"sensitivity of {len(rows)} group(s), each compressed alone; lowest headline PSNR: "
            + ", ".join(f"{r['group']} {r['psnr_db']:.1f} dB" for r in worst)
            + (f"; on the held-out set {sum(r['flips'] > 0 for r in on_set)} group(s) change a word, the WER moves "
               f"{min(r['wer_difference_points'] for r in on_set):+.2f} to "
               f"{max(r['wer_difference_points'] for r in on_set):+.2f} points" if on_set else ""))


UNCOMPRESSED = "uncompressed"  # the held-out label of the export a variant is compressed from


def _held_out_wer(model, dims, cache, base_exports: dict, variant_packages: dict, load, data_set: str,
                  remembered: TranscriptMemo | None = None, report=print_progress, progress=None) -> dict:
    """The variant on ``data_set`` beside NeMo and the uncompressed export (``held_out_entry``);
    ``{"skipped": reason}`` on a model not confident enough for its transcripts to mean anything."""
    base = {name: e.package for name, e in base_exports.items()}
    result, _, reason = held_out_evaluation(model, dims, cache, {UNCOMPRESSED: base, "variant": variant_packages},
                                            load, progress=progress or progress_bar("held-out set", "utterance"),
                                            report=lambda line: report(f"{data_set}: {line}"),
                                            flips_against=UNCOMPRESSED, data_set=data_set, remembered=remembered)
    if reason:
        return {"skipped": reason}
    return held_out_entry(result.block({"set": data_set}), "variant")


def describe_held_out(entry: dict) -> str:
    """One line: the variant's WER on the set against NeMo's and the words it changes."""
    if "skipped" in entry:
        return f"not evaluated on a set: {entry['skipped']}"
    flips = entry["flips"]
    return (f"WER on {entry['set']} {100 * entry['wer']:.2f}% (NeMo on the same windows "
            f"{100 * entry['wer_nemo']:.2f}%); "
            f"{flips['words']} word(s) changed against the {flips['against']} export in {flips['utterances']} "
            f"utterance(s), {flips['confident']} at confidence >= {flips['confident_at_least']}")

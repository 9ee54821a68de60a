"""Where a model comes from: a ``.nemo`` file, a Hugging Face hub id, or a built-in preset.

One option group, shared by the command line and pytest. A source can name its content
(``key``) without loading the model, so a warm export cache never imports NeMo's model code
nor builds 600M parameters just to find out that everything is already exported.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import logging
import socket
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlparse

from exporters import presets
from exporters.presets import TRAINED_PRESETS, build_model, get_preset
from infra.cache import sha256_file
from infra.errors import UserError

DEFAULT_PRESET = "parakeet-tdt-tiny-trained"
STREAMING_PRESET = "parakeet-tdt-tiny-streaming-trained"  # the suites' streaming model when the session's is not
HYBRID_PRESET = "tiny-tdt-ctc"  # the suites' model of a component the session's family lacks: it has them all


def add_source_options(add_option, prefix: str = "--") -> None:
    """Declare the source options on an argparse parser or a pytest option group."""
    add_option(f"{prefix}nemo-path", dest="nemo_path", metavar="FILE.nemo", default=None,
               help="restore a NeMo checkpoint of the Parakeet family: TDT or RNN-T (Parakeet-TDT v2/v3), "
                    "CTC (Parakeet-CTC) or a hybrid TDT-CTC (Parakeet-TDT-CTC)")
    add_option(f"{prefix}model-id", dest="model_id", metavar="ID", default=None,
               help="a Hugging Face hub id, e.g. nvidia/parakeet-tdt-0.6b-v3 (needs the hub or a warm local cache)")
    add_option(f"{prefix}preset", dest="preset", metavar="NAME", default=None,
               help="a built-in model: parakeet-tdt-0.6b-v3 or tiny (architectures with seeded weights), "
                    "or parakeet-tdt-tiny-trained (a small trained checkpoint shipped with the package)")


def _trained_preset_checkpoint(name: str) -> tuple[str, str] | None:
    """A trained preset is its shipped ``.nemo``, loaded exactly like ``--nemo-path``."""
    path = TRAINED_PRESETS.get(name)
    if path is None:
        return None
    if not path.is_file():
        raise UserError(f"--preset {name}: its checkpoint {path} is missing from this installation; "
                          "reproduce it with: python -m training.train_tiny")
    return "nemo", str(path)


@lru_cache(maxsize=8)
def _checkpoint_digest(path: str, size: int, mtime_ns: int) -> str:
    """sha256 of a checkpoint, once per process for an unchanged file (a 0.6B .nemo is 2.4 GB)."""
    return sha256_file(Path(path))


def quiet_nemo() -> None:
    """NeMo logs every module it builds; keep warnings and errors only."""
    logging.getLogger("nemo_logger").setLevel(logging.WARNING)
    try:
        # lazy: NeMo takes seconds to import; a warm export cache never needs it
        from nemo.utils import logging as nemo_logging

        nemo_logging.setLevel(logging.WARNING)
    except ImportError:
        pass


@dataclass(frozen=True)
class ModelSource:
    kind: str  # "preset" | "nemo" | "hub"
    value: str

    @classmethod
    def from_options(cls, nemo_path=None, model_id=None, preset=None, default_preset=None) -> ModelSource:
        given = [(k, v) for k, v in (("nemo", nemo_path), ("hub", model_id), ("preset", preset)) if v]
        if len(given) > 1:
            raise UserError("give one model source: --nemo-path, --model-id or --preset, not several")
        if not given:
            if default_preset is None:
                raise UserError("no model given; pass --nemo-path FILE.nemo, --model-id ID or --preset NAME")
            given = [("preset", default_preset)]
        kind, value = given[0]
        if kind == "preset":
            kind, value = _trained_preset_checkpoint(value) or (kind, value)
        source = cls(kind, str(value))
        source.validate()
        return source

    def cli_args(self) -> list[str]:
        """The command-line options that name this source."""
        return [{"preset": "--preset", "nemo": "--nemo-path", "hub": "--model-id"}[self.kind], self.value]

    def describe(self) -> str:
        return {"preset": "preset:", "nemo": "", "hub": "hub:"}[self.kind] + self.value

    def validate(self) -> None:
        """Fail fast, before any heavy import, on what can be checked cheaply."""
        if self.kind == "preset":
            try:
                get_preset(self.value)
            except ValueError as e:
                raise UserError(str(e)) from None
        elif self.kind == "nemo":
            path = Path(self.value)
            if path.is_dir():
                raise UserError(f"--nemo-path {path}: is a directory; expected a .nemo checkpoint file")
            if not path.is_file():
                raise UserError(f"--nemo-path {path}: no such file; expected a .nemo checkpoint")
            if not tarfile.is_tarfile(path):
                raise UserError(f"--nemo-path {path}: not a NeMo checkpoint (a .nemo is a tar archive)")

    def checkpoint_path(self) -> Path:
        """The .nemo file behind a file or hub source."""
        if self.kind == "nemo":
            return Path(self.value)
        if self.kind == "hub":
            return _hub_checkpoint(self.value)
        raise UserError("a preset has no checkpoint file")

    def key(self) -> str:
        """A digest of the model's content: the checkpoint's bytes, or the preset's recipe."""
        if self.kind == "preset":
            recipe = {"preset": presets.get_preset(self.value).as_dict(), "builder": inspect.getsource(presets)}
            return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()
        path = self.checkpoint_path().resolve()
        stat = path.stat()
        return _checkpoint_digest(str(path), stat.st_size, stat.st_mtime_ns)

    def load(self):
        """The model in eval mode, made deterministic for export (no dither, no padding).

        Loaded once per process, source and temporary directory: the exports of every precision
        and the Torch reference share it. A model keeps files in the temporary directory it was
        loaded under (its tokenizer), and a command's scratch directory goes when the command ends,
        so a model loaded under another one is loaded again.
        """
        return _load(self, tempfile.gettempdir())


@lru_cache(maxsize=2)
def _load(source: ModelSource, tempdir: str):
    quiet_nemo()
    if source.kind == "preset":
        model = build_model(get_preset(source.value))
    else:
        model = _restore(source.checkpoint_path())
    return prepare_for_export(model)


def _hub_reachable(timeout: float = 3.0) -> bool:
    """One quick connection to the hub: huggingface_hub itself retries with back-off for ~30 s."""
    from huggingface_hub import constants  # lazy: the hub client only for --model-id

    if constants.HF_HUB_OFFLINE:
        return False
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _hub_checkpoint(model_id: str) -> Path:
    """Resolve a hub id to its .nemo in the local Hugging Face cache, fetching it if the hub answers."""
    if model_id.count("/") != 1:
        raise UserError(f"--model-id {model_id!r}: expected OWNER/NAME, e.g. nvidia/parakeet-tdt-0.6b-v3")
    from huggingface_hub import hf_hub_download  # lazy: the hub client only for --model-id
    from huggingface_hub.errors import LocalEntryNotFoundError  # lazy: as above

    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)
    filename = model_id.split("/")[1] + ".nemo"
    try:
        return Path(hf_hub_download(model_id, filename, local_files_only=True))
    except LocalEntryNotFoundError:  # not cached: the hub, if it answers (any other failure is one to see)
        pass
    reason = "the hub could not be reached"
    if _hub_reachable():
        try:
            return Path(hf_hub_download(model_id, filename))
        except Exception as e:
            reason = f"the hub download failed: {type(e).__name__}"
    raise UserError(
        f"--model-id {model_id}: not in the local Hugging Face cache and {reason}; "
        f"download {filename} elsewhere and pass --nemo-path FILE.nemo"
    )


# The NeMo classes whose models this tool exports, and the parts of their config it relies on.
EXPORTABLE_CLASSES = "EncDecRNNTBPEModel (TDT, RNN-T), EncDecHybridRNNTCTCBPEModel (TDT-CTC), EncDecCTCModelBPE (CTC)"
FRONT_END, ENCODERS = "AudioToMelSpectrogramPreprocessor", ("ConformerEncoder",)


# torch.nn.init's in-place initializers: what a module's constructor fills its weights with
_INITIALIZERS = ("uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "eye_", "dirac_",
                 "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_", "sparse_")


@contextlib.contextmanager
def _initializers_skipped() -> Iterator[None]:
    """Inside: ``torch.nn.init``'s initializers leave their tensor as it is. Restoring a checkpoint
    builds the model, randomly initialized, and then overwrites every parameter with the
    checkpoint's (NeMo loads the state dict strictly: a parameter it lacks is an error); the
    initialization was a quarter of restoring the 0.6B model (7.7 of 28 s). Hugging Face's
    ``no_init_weights`` does the same for the same reason."""
    import torch  # lazy: as _restore

    saved = {name: getattr(torch.nn.init, name) for name in _INITIALIZERS if hasattr(torch.nn.init, name)}
    try:
        for name in saved:
            setattr(torch.nn.init, name, _left_as_is)
        yield
    finally:
        for name, initializer in saved.items():
            setattr(torch.nn.init, name, initializer)


def _left_as_is(tensor, *args, **kwargs):
    return tensor


def _weights_read_from_the_archive(path: Path):
    """A NeMo restore connector that reads the weights straight out of an uncompressed .nemo
    instead of extracting them to disk first and reading them back (the 0.6B model: 2.9 s
    against 6.0 + 6.5 s); every other member is extracted as NeMo does. None for a compressed
    archive, whose weights cannot be read in place: NeMo's own connector restores it."""
    import torch  # lazy: as _restore
    from nemo.core.connectors.save_restore_connector import SaveRestoreConnector  # lazy: as _restore

    try:
        with tarfile.open(path, "r:") as tar:
            weights = [m for m in tar.getmembers() if Path(m.name).name == SaveRestoreConnector().model_weights_ckpt]
    except tarfile.ReadError:  # compressed, or no archive at all: NeMo says which
        return None
    if len(weights) != 1:
        return None

    class WeightsFromTheArchive(SaveRestoreConnector):
        def _filtered_tar_info(self, tar_path, filter_fn=None):
            return [m for m in super()._filtered_tar_info(tar_path, filter_fn) if m.name != weights[0].name]

        def _load_state_dict_from_disk(self, model_weights, map_location="cpu"):
            with tarfile.open(path, "r:") as tar, tar.extractfile(weights[0].name) as file:
                return torch.load(file, map_location=map_location)

    return WeightsFromTheArchive()


def _restore(path: Path):
    from nemo.collections.asr.models import ASRModel  # lazy: NeMo only when a checkpoint is restored

    try:
        with _initializers_skipped():
            model = ASRModel.restore_from(str(path), map_location="cpu", strict=True,
                                          save_restore_connector=_weights_read_from_the_archive(path))
    except Exception as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"--nemo-path {path}: could not restore the checkpoint ({reason})") from None
    problem = unexportable(model)
    if problem:
        raise UserError(f"--nemo-path {path}: {problem}")
    return model


def unexportable(model) -> str | None:
    """Why this tool cannot export ``model`` (None when it can): recognised by its class (a
    transducer, a CTC model or a hybrid of both) and its config (a mel front end and a
    (Fast)Conformer encoder, the parts every exported component is traced through)."""
    from nemo.collections.asr.models import EncDecCTCModel, EncDecRNNTModel  # lazy: as _restore

    kind = type(model).__name__
    if not isinstance(model, (EncDecRNNTModel, EncDecCTCModel)):
        what = ("an attention encoder-decoder" if hasattr(model, "transf_decoder") or "MultiTask" in kind
                else "a classification model" if "Classification" in kind or "Label" in kind else "another kind")
        return (f"the checkpoint is a {kind} ({what}); expected a Parakeet-family ASR model of one of these "
                f"classes: {EXPORTABLE_CLASSES}")
    cfg = model.cfg
    for part, expected in (("preprocessor", (FRONT_END,)), ("encoder", ENCODERS)):
        target = str(cfg.get(part, {}).get("_target_", "")).rsplit(".", 1)[-1]
        if target not in expected:
            return (f"the checkpoint's {part} is {target or 'not declared'}; expected {' or '.join(expected)} "
                    f"(a {kind} of the Parakeet family)")
    return None


def prepare_for_export(model):
    """Eval mode, no dither, no padding to a multiple: the deterministic model both sides compare."""
    model.eval()
    featurizer = model.preprocessor.featurizer
    featurizer.dither = 0.0
    featurizer.pad_to = 0
    for p in model.parameters():
        p.requires_grad_(False)
    return model

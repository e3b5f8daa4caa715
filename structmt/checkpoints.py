"""fairseq checkpoints: safe loading on torch >= 2.6 (``weights_only=True`` stays on),
a trained model and its task from a checkpoint, and the updates a checkpoint holds.

fairseq checkpoints pickle what torch's safe loader does not know: the ``argparse.Namespace``
that holds a legacy model's settings (the rest of the config is saved as plain containers), and
numpy arrays and scalars among the logged metrics (``--eval-bleu``'s n-gram counts). Only those
are allowlisted (numpy's array and scalar rebuilders and its dtype, under numpy 1's and numpy 2's
module names); torch's safety is never turned off.

Importing this module imports the ``structmt`` package first, which registers
the models and allowlists those, so the loaders below need nothing more.
"""

from __future__ import annotations

import argparse
import logging
import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from .files import atomic_path
from .paths import RunFolder, dictionary_name

log = logging.getLogger(__name__)


def allow_fairseq_checkpoints() -> None:
    """Allowlist what fairseq checkpoints need for ``torch.load(weights_only=True)``: ``argparse.Namespace``, and
    numpy's arrays and scalars by the names numpy 1 (``numpy.core``) and numpy 2 (``numpy._core``) pickle them
    under, whichever numpy wrote the file."""
    import numpy as np

    numpy_parts = [(obj, name) for name, obj in numpy_pickle_globals().items()]
    # a dtype unpickles as an instance of its class (numpy 2: numpy.dtypes.Int64DType, ...), which torch builds
    dtype_classes = list({type(np.dtype(code)) for code in np.typecodes["All"]} - {np.dtype})
    torch.serialization.add_safe_globals([argparse.Namespace, *numpy_parts, *dtype_classes])


def numpy_pickle_globals() -> dict[str, Any]:
    """What a pickled numpy array or scalar names, by the names numpy 1 (``numpy.core``) and numpy 2
    (``numpy._core``) pickle it under → this numpy's object: array and scalar rebuilders, ``ndarray``, ``dtype``.
    Nothing among them runs code."""
    import numpy as np

    multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    found: dict[str, Any] = {"numpy.ndarray": np.ndarray, "numpy.dtype": np.dtype}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        found |= {f"{module}._reconstruct": multiarray._reconstruct, f"{module}.scalar": multiarray.scalar}
    return found


def _refused_global(err: BaseException) -> str | None:
    """What torch's safe loader refused to build, when that is why a checkpoint could not be read."""
    found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
    return found.group(1) if found else None


#: what torch's and fairseq's loaders raise on a file that is not a whole checkpoint (damaged bytes reach the
#: unpickler as any of these); other errors, such as structmt's own ValueError for a misnamed override, pass
_UNREADABLE = (
    pickle.UnpicklingError,
    EOFError,
    KeyError,
    IndexError,
    AttributeError,
    RuntimeError,
    TypeError,
    UnicodeDecodeError,
    OverflowError,
)


def _unreadable(checkpoint: Path, err: BaseException) -> str:
    """Why ``checkpoint`` could not be read, in one line: what the file is where torch did not write it (its
    first bytes), else torch's reason without its advice to turn ``weights_only`` off (never the fix for a
    damaged file, and unsafe for a file of unknown origin)."""
    try:
        with open(checkpoint, "rb") as f:
            head = f.read(32)
    except OSError:
        head = b""
    if head and not head.startswith(b"PK\x03\x04") and head[0] != 0x80:  # a zip archive, or a legacy pickle
        if head.startswith(b"version https://git-lfs"):
            return "a Git LFS pointer, not the file itself: `git lfs pull` fetches it"
        return f"torch did not write it: it begins {head[:16]!r}"
    text = str(err)
    found = re.search(r"WeightsUnpickler error:\s*([^\n]+)", text)
    lines = [line for line in text.strip().splitlines() if line.strip() and "weights_only" not in line]
    why = found.group(1) if found else next(iter(lines), "")
    return f"{type(err).__name__}: {why.strip()[:200] or ('empty or cut short' if isinstance(err, EOFError) else '?')}"


def _refused(checkpoint: Path, name: str) -> ValueError:
    return ValueError(
        f"{checkpoint}: torch's safe loader (weights_only) refuses {name}, which the checkpoint pickles; structmt "
        "allowlists what fairseq writes (argparse.Namespace, numpy arrays). If you trust the file, allowlist it "
        f"before loading: torch.serialization.add_safe_globals([{name}])"
    )


def saved_model_settings(state: dict[str, Any]) -> Any:
    """A checkpoint's model settings: its ``cfg.model`` (a DictConfig or dict), or a legacy one's ``args``
    (an ``argparse.Namespace``); None where it has neither."""
    return (state.get("cfg") or {}).get("model") or state.get("args")


def model_setting(model_cfg: Any, key: str) -> Any:
    """``key`` of model settings (an ``argparse.Namespace``, a DictConfig or a dict), None where absent."""
    return model_cfg.get(key) if isinstance(model_cfg, dict) else getattr(model_cfg, key, None)


def _unknown_architecture(checkpoint: Path, state: dict[str, Any]) -> ValueError | None:
    """A checkpoint of an architecture no loaded plugin registers: fairseq's own error for it is an IndexError
    of a broken format string."""
    from fairseq.models import ARCH_MODEL_REGISTRY, MODEL_REGISTRY

    saved = saved_model_settings(state)
    arch = (model_setting(saved, "arch") or model_setting(saved, "_name")) if saved is not None else None
    if arch is None or arch in ARCH_MODEL_REGISTRY or arch in MODEL_REGISTRY:
        return None
    return ValueError(
        f"{checkpoint}: a model of --arch {arch}, which neither fairseq nor structmt registers; structmt reads "
        "transformer checkpoints (transformer_* or structured_transformer_* architectures)"
    )


def _trained_on(checkpoint: Path) -> Path | None:
    """The data-bin ``checkpoint`` says it was trained on (its ``cfg.task.data``, a legacy one's ``args.data``;
    the first of several), where that folder is on this machine; None otherwise (and for a file that is not a
    checkpoint: :func:`load_model` says what it is)."""
    try:
        state = checkpoint_state(checkpoint)
    except ValueError:
        return None
    task = (state.get("cfg") or {}).get("task") or state.get("args")
    data = model_setting(task, "data") if task is not None else None
    if not isinstance(data, str) or not data:
        return None
    folder = Path(data.split(os.pathsep)[0]).expanduser()  # fairseq reads the dictionaries of the first
    return folder if folder.is_dir() else None


def _other_dictionaries(checkpoint: Path, data_dir: Path) -> ValueError | None:
    """A data-bin whose dictionaries differ from those ``checkpoint`` was trained with: of another size it fails
    to load, but the same size with other symbols or counts (the data prepared again) loaded and read other tokens,
    in silence. A run folder's checkpoint (``<run>/checkpoints/*.pt``) has them beside it (``<run>/model``,
    :class:`~structmt.paths.RunFolder`): another data-bin is an error. Any other checkpoint is compared with the
    data-bin it records, where that is here, with a warning (that folder may have been prepared again since)."""
    run = RunFolder(checkpoint.parent.parent)
    kept = sorted(run.model.glob(dictionary_name("*"))) if checkpoint.parent.name == "checkpoints" else []
    recorded = None if kept else _trained_on(checkpoint)
    if recorded is not None and recorded.resolve() != data_dir.resolve():
        kept = sorted(recorded.glob(dictionary_name("*")))
    for dictionary in kept:
        given = data_dir / dictionary.name
        if not given.is_file() or given.read_bytes() == dictionary.read_bytes():
            continue
        if recorded is None:
            return ValueError(
                f"{given} is not the dictionary {checkpoint} was trained with ({dictionary}): give the data-bin "
                "the model was trained on (its run's data folder, prepared with the run's data.* settings)"
            )
        log.warning(
            f"{given} differs from {dictionary}, of the data-bin {checkpoint} says it was trained on: unless that "
            f"folder was prepared again since, give {recorded} instead (a dictionary of the same size with other "
            "tokens reads other words, in silence)"
        )
        return None
    return None


def load_model(checkpoint: Path, data_dir: Path, **overrides: str) -> tuple[Any, Any]:
    """A model (eval mode) and its task from a checkpoint (dense or structured) and the folder
    of its dictionaries (a data-bin); ``overrides``: more of the checkpoint's settings to replace.
    Anything but a fairseq transformer checkpoint is a ``ValueError`` naming the file."""
    from fairseq import checkpoint_utils
    from fairseq.models.transformer import TransformerModel

    if other := _other_dictionaries(checkpoint, data_dir):
        raise other
    overrides = {"data": str(data_dir), **overrides}
    try:  # the file itself (a state dict that does not fit data_dir: below)
        state = checkpoint_utils.load_checkpoint_to_cpu(str(checkpoint), overrides)
    except _UNREADABLE as err:
        if name := _refused_global(err):
            raise _refused(checkpoint, name) from err
        if isinstance(err, KeyError):  # fairseq upgrades a legacy checkpoint (its args) by its architecture's name
            try:
                state = checkpoint_state(checkpoint)
            except ValueError:
                state = {}
            if unknown := _unknown_architecture(checkpoint, state):
                raise unknown from None
        raise ValueError(
            f"{checkpoint}: not a fairseq checkpoint, or one cut short ({_unreadable(checkpoint, err)}); give "
            "a whole one: a run's checkpoints/checkpoint_last.pt, or the newest checkpoint_<epoch>_<updates>.pt"
        ) from err
    if unknown := _unknown_architecture(checkpoint, state):
        raise unknown
    try:
        models, _, task = checkpoint_utils.load_model_ensemble_and_task(
            [str(checkpoint)], arg_overrides=overrides, state=state
        )
    except ValueError as err:
        if "joined dictionary" not in str(err):  # fairseq's --share-all-embeddings check, naming no file
            raise
        raise ValueError(
            f"{checkpoint} shares one embedding between source and target (--share-all-embeddings), but the two "
            f"dictionaries of {data_dir} differ: give the data-bin the model was trained on"
        ) from None
    except RuntimeError as err:
        if "size mismatch" not in str(err):
            raise
        # the model is built with data_dir's dictionaries: other ones give embeddings of another size
        first = next((line.strip() for line in str(err).splitlines() if "size mismatch" in line), "")
        raise ValueError(
            f"{checkpoint} does not fit the dictionaries of {data_dir} ({first[:300]}); give the data-bin the "
            "model was trained on"
        ) from None
    if not isinstance(models[0], TransformerModel):
        raise ValueError(
            f"{checkpoint}: a {type(models[0]).__name__}; structmt reads transformer checkpoints "
            "(transformer_* or structured_transformer_* architectures)"
        )
    return models[0].eval(), task


def checkpoint_state(checkpoint: Path) -> dict[str, Any]:
    """A fairseq checkpoint's contents, its tensors memory-mapped (read only where used; a checkpoint in torch's
    legacy format, which cannot be memory-mapped, is read whole)."""
    try:
        try:
            state = torch.load(checkpoint, map_location="cpu", mmap=True)
        except RuntimeError as err:
            if "mmap can only be used with files saved with" not in str(err):
                raise
            state = torch.load(checkpoint, map_location="cpu")
    except _UNREADABLE as err:
        if name := _refused_global(err):
            raise _refused(checkpoint, name) from None
        raise ValueError(
            f"{checkpoint}: cannot be read ({_unreadable(checkpoint, err)}); a copy cut short (written before "
            f"structmt kept it whole)? The newest checkpoint_<epoch>_<updates>.pt of {checkpoint.parent}, if any, "
            "is whole: give it instead, or copy it over this file to resume a run from there (or delete the run "
            "folder to train it again)"
        ) from None
    return state


def checkpoint_updates(checkpoint: Path) -> int:
    """Number of updates stored in a fairseq checkpoint (0 when there is none)."""
    if not checkpoint.exists():
        return 0
    return saved_updates(checkpoint_state(checkpoint), checkpoint)


def saved_updates(state: dict[str, Any], checkpoint: Path) -> int:
    """The number of updates in a loaded checkpoint's ``state`` (``checkpoint`` names it in the error)."""
    try:
        return int(state["optimizer_history"][-1]["num_updates"])
    except (KeyError, IndexError, TypeError, ValueError):
        raise ValueError(
            f"{checkpoint}: not a checkpoint fairseq-train wrote (no update count in its optimizer_history); "
            "give a checkpoint_*.pt of a training run"
        ) from None


def training_seconds(checkpoint: Path) -> float | None:
    """fairseq's cumulative training time stored in a checkpoint: the wall-clock seconds of every process that
    trained it, up to that save (a resumed process adds to the time of the checkpoint it resumed from; work
    after a process's last save, lost with it, is not counted). ``None`` when the file or the value is absent."""
    if not checkpoint.is_file():
        return None
    seconds = (checkpoint_state(checkpoint).get("extra_state") or {}).get("previous_training_time")
    return float(seconds) if seconds is not None else None


def interval_checkpoint_name(suffix: str = "") -> str:
    """fairseq-train's name for a checkpoint saved every ``--save-interval-updates`` (``checkpoint_<epoch>_<updates>``,
    then its ``--checkpoint-suffix``), a pattern whose group is the updates."""
    return rf"checkpoint_\d+_(\d+){re.escape(suffix)}\.pt"


def last_checkpoints(run: RunFolder, count: int, interval: int) -> list[Path]:
    """A run's last ``count`` checkpoints, ``interval`` updates apart, newest first: ``checkpoint_last.pt`` and the
    ``checkpoint_<epoch>_<updates>.pt`` of the ``count - 1`` multiples of ``interval`` before its update (one saved
    at its update holds its weights; one of a later update is an earlier training's, in the same folder). One
    missing is a ``ValueError`` naming it: the next older one would stretch the window in silence."""
    last = checkpoint_updates(run.last_checkpoint)
    named = interval_checkpoint_name()
    saved = {int(m[1]): p for p in run.checkpoints.iterdir() if (m := re.fullmatch(named, p.name))}
    wanted = [(last - 1) // interval * interval - k * interval for k in range(count - 1)] if last else []
    missing = [updates for updates in wanted if updates not in saved]
    if not last or missing:
        has = ", ".join(f"{u}" for u in sorted(saved, reverse=True)) or "none"
        raise ValueError(
            f"{run.checkpoints}: averaging the last {count} checkpoints (train.average_last) needs checkpoint_last.pt"
            f" and the checkpoint_<epoch>_<updates>.pt of updates {', '.join(map(str, wanted)) or '?'} "
            f"({interval} apart); "
            + (f"{', '.join(map(str, missing))} missing" if last else "checkpoint_last.pt missing")
            + f" (it has those of updates {has}). Train the run again (remove its folder), or average fewer "
            "(train.average_last: another run id)"
        )
    return [run.last_checkpoint, *(saved[updates] for updates in wanted)]


def tied_weights(weights: dict[str, torch.Tensor]) -> dict[str, str]:
    """Each weight's name → the first name of a tensor that is the same view of the same memory: fairseq saves
    tied embeddings (``--share-all-embeddings``: encoder, decoder and output projection) once under three names
    when the model's tensors were on the CPU in fp32 (its save moves each tensor to the CPU apart: from a GPU, or
    cast from fp16/bf16, they are three copies, averaged and saved as three)."""
    seen: dict[tuple[Any, ...], str] = {}
    first = {}
    for name, t in weights.items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)
        first[name] = seen.setdefault(key, name) if t.numel() else name
    return first


def average_checkpoints(checkpoints: list[Path], out: Path) -> list[int]:
    """Write to ``out`` (through a temporary file) the first of ``checkpoints`` with its model weights replaced by
    the mean of theirs, without its optimiser state; returns each one's updates. Float weights are summed in
    float64 (fairseq's ``scripts/average_checkpoints.py`` sums in float32) and kept in float32 or wider, as that
    script keeps them; other tensors must agree; weights that share memory in the first checkpoint (tied
    embeddings, where fairseq saved them so: a checkpoint written on the CPU in fp32) are averaged and saved once,
    as they were saved."""
    total: dict[str, torch.Tensor] = {}
    updates, first, tied = [], None, {}
    for path in checkpoints:
        state = checkpoint_state(path)
        updates.append(saved_updates(state, path))  # a fairseq-train checkpoint (else a ValueError naming it)
        weights = state.get("model")
        if not isinstance(weights, dict) or not weights:
            raise ValueError(f"{path}: holds no model weights; give checkpoints fairseq-train wrote")
        if first is None:
            first, tied = state, tied_weights(weights)
        elif list(weights) != list(tied):
            other = sorted(set(weights) ^ set(tied))[:3]
            raise ValueError(
                f"{path}: not the model of {checkpoints[0]} (other weights: {', '.join(other) or 'another order'}); "
                "checkpoints of one training are averaged"
            )
        for name, tensor in weights.items():
            if (same := tied[name]) != name:  # averaged under the first name: the same values, or not one model
                if not torch.equal(tensor, weights[same]):
                    raise ValueError(f"{path}: {name} is not {same}, as in {checkpoints[0]} (tied there)")
            elif name not in total:
                total[name] = tensor.double() if tensor.is_floating_point() else tensor.clone()
            elif tensor.shape != total[name].shape:
                raise ValueError(
                    f"{path}: {name} is {tuple(tensor.shape)}, not {tuple(total[name].shape)} as in {checkpoints[0]}; "
                    "checkpoints of one training are averaged"
                )
            elif tensor.is_floating_point():
                total[name] += tensor.double()
            elif not torch.equal(tensor, total[name]):
                raise ValueError(f"{path}: {name} (not a weight: {tensor.dtype}) differs from {checkpoints[0]}'s")
    assert first is not None, "no checkpoints to average"
    averaged = {}
    for name, same in tied.items():
        if same != name:  # a tied weight: its first name's tensor, saved once
            averaged[name] = averaged[same]
            continue
        tensor = total[name]
        if tensor.is_floating_point():
            kind = first["model"][name].dtype
            tensor = (tensor / len(checkpoints)).to(kind if torch.finfo(kind).bits >= 32 else torch.float32)
        averaged[name] = tensor
    state = {key: value for key, value in first.items() if key != "last_optimizer_state"} | {"model": averaged}
    with atomic_path(out) as tmp:
        torch.save(state, tmp)
    return updates

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
import pickle
import re
from pathlib import Path
from typing import Any

import torch


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


def _refused(checkpoint: Path, name: str) -> ValueError:
    return ValueError(
        f"{checkpoint}: torch's safe loader (weights_only) refuses {name}, which the checkpoint pickles; structmt "
        "allowlists what fairseq writes (argparse.Namespace, numpy arrays). If you trust the file, allowlist it "
        f"before loading: torch.serialization.add_safe_globals([{name}])"
    )


def load_model(checkpoint: Path, data_dir: Path, **overrides: str) -> tuple[Any, Any]:
    """A model (eval mode) and its task from a checkpoint (dense or structured) and the folder
    of its dictionaries (a data-bin); ``overrides``: more of the checkpoint's settings to replace.
    Anything but a fairseq transformer checkpoint is a ``ValueError`` naming the file."""
    from fairseq import checkpoint_utils
    from fairseq.models.transformer import TransformerModel

    overrides = {"data": str(data_dir), **overrides}
    try:  # the file itself (a state dict that does not fit data_dir: below)
        state = checkpoint_utils.load_checkpoint_to_cpu(str(checkpoint), overrides)
    except (pickle.UnpicklingError, EOFError, KeyError, AttributeError, RuntimeError) as err:
        if name := _refused_global(err):
            raise _refused(checkpoint, name) from err
        # torch's text can run to many lines (weights_only's advice): its first says what went wrong
        why = next(iter(str(err).strip().splitlines()), "") or (
            "empty or cut short" if isinstance(err, EOFError) else "?"
        )
        raise ValueError(
            f"{checkpoint}: not a fairseq checkpoint, or one cut short ({type(err).__name__}: {why[:200]}); give "
            "a whole one: a run's checkpoints/checkpoint_last.pt, or the newest checkpoint_<epoch>_<updates>.pt"
        ) from err
    try:
        models, _, task = checkpoint_utils.load_model_ensemble_and_task(
            [str(checkpoint)], arg_overrides=overrides, state=state
        )
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
    except (RuntimeError, EOFError, pickle.UnpicklingError) as err:
        if name := _refused_global(err):
            raise _refused(checkpoint, name) from None
        raise ValueError(
            f"{checkpoint}: cannot be read ({err}); a copy cut short (written before structmt kept it whole)? "
            f"Copy the newest checkpoint_<epoch>_<updates>.pt of {checkpoint.parent} over it to resume from there, "
            "or delete the run folder to train it again"
        ) from None
    return state


def checkpoint_updates(checkpoint: Path) -> int:
    """Number of updates stored in a fairseq checkpoint (0 when there is none)."""
    if not checkpoint.exists():
        return 0
    state = checkpoint_state(checkpoint)
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

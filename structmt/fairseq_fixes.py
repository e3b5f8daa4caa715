"""Fixes to fairseq 0.12 that the plugin applies when it is imported (``--user-dir structmt``).

Quiet import (:func:`import_fairseq_quietly`): three fairseq modules call
``logging.basicConfig`` when imported (``wav2vec2_classification`` at DEBUG level), which
turned on every library's DEBUG records in any program that imports fairseq before it sets
up logging, and printed INFO notices (``Please install tensorboardX``) at import.  structmt
imports fairseq with ``basicConfig`` disabled, so logging stays as the program sets it
(:func:`structmt.console.setup` for the command-line tools).  fairseq's own command-line
tools import fairseq before they load the plugin, so their logs (``train.log``,
``decode.log``) are unchanged.  It also silences torch's warning that fairseq's batch iterators ask
for pinned memory on a machine without a GPU (once per iterator otherwise).

bf16 (:func:`keep_bf16_off_tpu`):

fairseq 0.12's ``options.parse_args_and_arch`` makes ``--bf16`` imply ``--tpu``
(bfloat16 was a TPU feature when it was written; facebookresearch/fairseq#4696),
which sends ``fairseq-train --bf16`` on a GPU to torch_xla and fails.  With
structmt loaded, ``--bf16`` means bfloat16 on whatever device trains, and
``--tpu`` only when the command line asks for it.  fairseq imports the user
directory while it builds its parser, before it parses, so the fix is in place
for ``fairseq-train``, ``fairseq-generate`` and the rest.

Whole checkpoints (:func:`copy_checkpoints_whole`): fairseq saves a checkpoint atomically (a
temporary file renamed), then *copies* it to ``checkpoint_last.pt`` with a plain
``shutil.copyfile``.  A run killed during that copy kept a truncated ``checkpoint_last.pt``,
which the next run could not resume from.  With structmt loaded, a copy between local files
goes through a temporary file renamed into place: ``checkpoint_last.pt`` is the old one or the
new one, never part of one (against a killed process: nothing is synced to disk, so not against a
power loss), and the folder holds one more checkpoint while it is copied.  ``overwrite=False`` onto
a file that exists raises ``FileExistsError`` (fairseq's callers all pass ``overwrite=True``).

Interval checkpoints at an epoch's end (:func:`save_interval_checkpoints_at_epoch_ends`): fairseq writes
``checkpoint_<epoch>_<updates>.pt`` every ``--save-interval-updates`` except where the interval's update is
the last of an epoch, which it leaves to the epoch's checkpoint ``checkpoint<epoch>.pt``; under
``--no-epoch-checkpoints`` that update's weights were in no file once ``checkpoint_last.pt`` moved on, and
the last ``--keep-interval-updates`` checkpoints reached further back than the interval says (checkpoint
averaging, ``train.average_last``, averaged other updates, or too few).  With structmt loaded and
``--no-epoch-checkpoints`` given, that checkpoint is written too (a copy of ``checkpoint_last.pt``), and the
oldest beyond ``--keep-interval-updates`` removed, as fairseq does after its own interval saves.  Where
fairseq-train's environment sets ``STRUCTMT_SLIM_OLD_CHECKPOINTS=1`` (structmt-run's trainings), the interval
checkpoints but the newest are rewritten without their optimiser state: kept for their weights, they take a
third of the room under Adam (``train.average_last`` keeps up to 20 of them); ``checkpoint_last.pt``, which
training resumes from, and the newest interval one keep it.
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
import re
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any

from .checkpoints import interval_checkpoint_name, saved_updates
from .files import atomic_path, replace_durably

#: torch's deprecation of ``torch.jit.script`` (torch 2.14 on), which fairseq's modules apply as they are imported
JIT_DEPRECATION = "`torch.jit.script` is deprecated"


def import_fairseq_quietly() -> None:
    """Import fairseq (which imports all its models and tasks) without the ``logging.basicConfig`` calls
    its modules make, and without torch's deprecation of ``torch.jit.script`` (torch 2.14 on), which fairseq's
    modules apply as they are imported: two lines about fairseq's code at the start of every command."""
    if "fairseq" in sys.modules:  # fairseq's own tools, which load the plugin later: their logging stays
        return
    basic_config = logging.basicConfig
    logging.basicConfig = lambda *args, **kwargs: None  # type: ignore[assignment]
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=JIT_DEPRECATION, category=FutureWarning)
            importlib.import_module("fairseq")
    finally:
        logging.basicConfig = basic_config
    # fairseq's batch iterators always ask for pinned memory; on a machine without a GPU torch says so
    # at every iterator (structmt's in-process readers: analysis, decoding benchmark)
    warnings.filterwarnings("ignore", message="'pin_memory' argument is set as true but no accelerator")


def keep_bf16_off_tpu() -> None:
    """Wrap ``fairseq.options.parse_args_and_arch`` so that ``--bf16`` no longer sets ``tpu`` (idempotent)."""
    import_fairseq_quietly()  # structmt's first import of fairseq (the package calls this when imported)
    from fairseq import options

    original = options.parse_args_and_arch
    if getattr(original, "keeps_bf16_off_tpu", False):
        return

    @functools.wraps(original)
    def parse_args_and_arch(
        parser: Any,
        input_args: list[str] | None = None,
        parse_known: bool = False,
        suppress_defaults: bool = False,
        modify_parser: Any = None,
    ) -> Any:
        given = sys.argv[1:] if input_args is None else input_args
        try:
            result = original(parser, input_args, parse_known, suppress_defaults, modify_parser)
        except ValueError as err:  # fairseq's --bf16 implied --tpu: "Cannot combine --fp16 and --tpu" named no bf16
            if "--fp16 and --tpu" in str(err) and "--tpu" not in given:
                raise ValueError(
                    "--fp16 (or --memory-efficient-fp16) and --bf16 (or --memory-efficient-bf16) cannot be combined: "
                    "choose one half precision"
                ) from None
            raise
        args = result[0] if parse_known else result
        if getattr(args, "bf16", False) and "--tpu" not in given:
            args.tpu = False
        return result

    parse_args_and_arch.keeps_bf16_off_tpu = True  # type: ignore[attr-defined]
    options.parse_args_and_arch = parse_args_and_arch


def copy_checkpoints_whole() -> None:
    """Make fairseq's ``PathManager.copy`` between local files write a temporary file and rename it
    (idempotent); paths of other storage (``s3://``, ``manifold://``) keep fairseq's own copy.  A kill
    during the copy can leave ``<dst>.tmp-copy`` (the next copy replaces it); ``<dst>`` is whole."""
    import_fairseq_quietly()
    from fairseq.file_io import PathManager

    original = PathManager.copy
    if getattr(original, "copies_whole", False):
        return

    def copy(src_path: str, dst_path: str, overwrite: bool = False) -> Any:
        if "://" in str(src_path) or "://" in str(dst_path) or PathManager.path_requires_pathmanager(str(dst_path)):
            return original(src_path, dst_path, overwrite=overwrite)
        if not overwrite and os.path.exists(dst_path):
            raise FileExistsError(f"{dst_path} exists and overwrite is False")
        tmp = f"{dst_path}.tmp-copy"
        try:
            shutil.copyfile(src_path, tmp)
            replace_durably(tmp, dst_path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return True

    copy.copies_whole = True  # type: ignore[attr-defined]
    PathManager.copy = staticmethod(copy)  # type: ignore[method-assign]


#: set to 1 in fairseq-train's environment (structmt-run does): the interval checkpoints older than the newest
#: are rewritten without their optimiser state (:func:`save_interval_checkpoints_at_epoch_ends`)
SLIM_OLD_CHECKPOINTS = "STRUCTMT_SLIM_OLD_CHECKPOINTS"


def save_interval_checkpoints_at_epoch_ends() -> None:
    """Wrap ``fairseq.checkpoint_utils.save_checkpoint`` so that under ``--no-epoch-checkpoints`` an interval
    checkpoint due at an epoch's last update is written like any other, and, with :data:`SLIM_OLD_CHECKPOINTS`
    set, the interval checkpoints but the newest lose their optimiser state (idempotent)."""
    import_fairseq_quietly()
    from fairseq import checkpoint_utils
    from fairseq.file_io import PathManager

    original = checkpoint_utils.save_checkpoint
    if getattr(original, "saves_epoch_end_intervals", False):
        return

    @functools.wraps(original)
    def save_checkpoint(cfg: Any, trainer: Any, epoch_itr: Any, val_loss: Any) -> Any:
        ours = not cfg.no_save and trainer.should_save_checkpoint_on_current_rank
        suffix = trainer.checkpoint_suffix
        last = os.path.join(cfg.save_dir, f"checkpoint_last{suffix}.pt")
        intervals = interval_checkpoint_name(suffix)
        epoch_ends = cfg.save_interval_updates > 0 and cfg.no_epoch_checkpoints and not cfg.no_last_checkpoints
        if ours and epoch_ends and os.path.isfile(last):  # a process killed between the two saves below: copy now
            _copy_a_due_interval_checkpoint(last, cfg.save_interval_updates, intervals, suffix, PathManager)
        saved = original(cfg, trainer, epoch_itr, val_loss)
        if not ours:
            return saved
        updates = trainer.get_num_updates()
        due = cfg.save_interval_updates > 0 and updates > 0 and updates % cfg.save_interval_updates == 0
        if due and epoch_itr.end_of_epoch() and epoch_ends:
            named = os.path.join(cfg.save_dir, f"checkpoint_{epoch_itr.epoch}_{updates}{suffix}.pt")
            PathManager.copy(last, named, True)
            if cfg.keep_interval_updates > 0 and cfg.keep_interval_updates_pattern == -1:
                kept = checkpoint_utils.checkpoint_paths(cfg.save_dir, pattern=intervals)  # newest first
                for old in kept[cfg.keep_interval_updates :]:  # the oldest beyond those kept, as fairseq removes them
                    if os.path.lexists(old):
                        os.remove(old)
        if os.environ.get(SLIM_OLD_CHECKPOINTS) == "1":
            for old in checkpoint_utils.checkpoint_paths(cfg.save_dir, pattern=intervals)[1:]:
                try:
                    drop_optimizer_state(old)
                except Exception as err:  # noqa: BLE001 - room saved, never a reason to stop a training
                    logging.getLogger("structmt").warning(f"{old}: its optimiser state is kept ({err})")
        return saved

    save_checkpoint.saves_epoch_end_intervals = True  # type: ignore[attr-defined]
    checkpoint_utils.save_checkpoint = save_checkpoint


def _copy_a_due_interval_checkpoint(last: str, interval: int, intervals: str, suffix: str, files: Any) -> None:
    """Copy ``checkpoint_last.pt`` to its interval name where it holds an interval's update that no interval
    checkpoint holds: an epoch's end saved it, and the process was killed before it was copied (the resumed run's
    last checkpoints to average would lack that update)."""
    import torch

    try:  # never a reason to stop a training: a file fairseq cannot resume from fails its own load
        state = torch.load(last, map_location="cpu", mmap=True)
        updates = saved_updates(state, Path(last))
    except Exception:  # noqa: BLE001 - a legacy (not memory-mappable) file, or not fairseq-train's
        return
    if updates <= 0 or updates % interval:
        return
    folder = os.path.dirname(last)
    if any((m := re.fullmatch(intervals, name)) and int(m[1]) == updates for name in os.listdir(folder)):
        return
    epoch = ((state.get("extra_state") or {}).get("train_iterator") or {}).get("epoch", 0)
    files.copy(last, os.path.join(folder, f"checkpoint_{epoch}_{updates}{suffix}.pt"), True)


def drop_optimizer_state(path: str) -> None:
    """Rewrite a fairseq checkpoint without its optimiser state (through a temporary file; one without it is left
    as it is): kept for its weights (checkpoint averaging), it is not resumed from, and the state is twice the
    weights under Adam."""
    import torch

    state = torch.load(path, map_location="cpu", mmap=True)
    if "last_optimizer_state" not in state:
        return
    del state["last_optimizer_state"]
    with atomic_path(Path(path)) as tmp:
        torch.save(state, tmp)

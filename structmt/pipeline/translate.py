"""``structmt-translate RUN_DIR < src > hyp``: translate raw text with a trained run,
applying the run's own SentencePiece model and dictionary; output is
detokenized, one line per input line, in input order."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from ..attention.options import IMPLS
from ..checkpoints import checkpoint_state, checkpoint_updates, load_model, model_setting, saved_model_settings
from ..console import add_verbose_option, setup
from ..fairseq_cli import MAX_LEN_A, MAX_LEN_B
from ..files import DataError, decode_utf8, existing_dir, existing_file, finite_float, int_at_least, text_lines
from ..leaderboard_csv import read_rows, score_text, short_commit, training
from ..paths import RESULTS_DIR, ResultsFolder, RunFolder
from .evaluation import named_test_set, row_file
from .spec import ModelSpec, read_spec, recorded_average_last, run_model_checkpoint

log = logging.getLogger(__name__)


def read_input(raw: bytes) -> list[str]:
    """The lines of raw standard input (split as :func:`text_lines` does); invalid UTF-8 is an error naming the line."""
    try:
        text = decode_utf8(raw, "standard input", "give UTF-8 text")
    except DataError as err:
        raise SystemExit(f"error: {err}") from None
    return text_lines(text.removeprefix("\ufeff"))[0]  # a byte-order mark is no text, as read_lines has it


class Translator:
    """Beam search with one trained run; loads once, translates many batches.  ``beam``: the run's own
    (``train.beam``, as the pipeline decodes its test sets) unless given; ``impl``: the structured attention's
    kernel (``--struct-impl``), the run's own unless given (a run trained with ``triton`` decodes here on the
    CPU: give ``auto``)."""

    def __init__(
        self,
        run_dir: Path,
        *,
        beam: int | None = None,
        lenpen: float | None = None,
        batch_size: int = 64,
        checkpoint: Path | None = None,
        impl: str | None = None,
    ):
        import sentencepiece as spm
        import torch
        from fairseq.dataclass.configs import GenerationConfig

        run_dir = Path(run_dir)
        run = RunFolder(run_dir)
        ckpt = checkpoint or run_model_checkpoint(run_dir)  # the model its test sets were scored with
        folder = run.model
        for path in (ckpt, run.spm_model):
            if not path.is_file():
                raise FileNotFoundError(f"{path} not found: is {run_dir} a finished structmt run folder?")
        recorded = read_spec(run_dir)  # a run of older code: the settings added since at their defaults
        src, tgt = recorded.data.src, recorded.data.tgt
        beam = beam or recorded.schedule.beam
        if lenpen is None:  # as the pipeline decoded its test sets
            lenpen = recorded.schedule.lenpen
        kernel = {}
        if impl:  # for the checkpoint's own architecture (another run's may be given), not the run's record
            arch = model_setting(saved_model_settings(checkpoint_state(ckpt)) or {}, "arch") or "?"
            if ModelSpec(arch=arch).structured:
                kernel = {"struct_impl": impl}
            else:  # a dense model has no such option
                log.warning(f"--struct-impl {impl}: {ckpt} is a dense model (--arch {arch}): no kernel to choose")
        model, self.task = load_model(ckpt, folder, source_lang=src, target_lang=tgt, **kernel)
        self.models = [model]
        self.sp = spm.SentencePieceProcessor(model_file=str(run.spm_model))
        self.generator = self.task.build_generator(
            self.models, GenerationConfig(beam=beam, lenpen=lenpen, max_len_a=MAX_LEN_A, max_len_b=MAX_LEN_B)
        )
        self.batch_size = batch_size
        self.checkpoint = ckpt
        self._torch = torch

    def translate(self, lines: list[str]) -> list[str]:
        """One translation per line; a line of no text (blank, or only characters the SentencePiece model drops,
        such as a zero-width space) gives a blank line, as in the pipeline's decoding (the model is not asked to
        translate nothing); a line longer than the model's source positions is refused, naming it, before anything is
        translated (as ``fairseq-interactive`` refuses it)."""
        from fairseq.utils import resolve_max_positions

        src_dict, tgt_dict = self.task.source_dictionary, self.task.target_dictionary
        pieces = {i: self.sp.encode(line.strip(), out_type=str) for i, line in enumerate(lines) if line.strip()}
        todo = [i for i, encoded in pieces.items() if encoded]  # the lines to translate
        tokens = [src_dict.encode_line(" ".join(pieces[i]), add_if_not_exist=False).long() for i in todo]
        limits = resolve_max_positions(self.task.max_positions(), *(m.max_positions() for m in self.models))
        limit = limits[0] if isinstance(limits, tuple) else limits  # None: no limit
        too_long = [
            (i, t.numel()) for i, t in zip(todo, tokens, strict=True) if limit is not None and t.numel() > limit
        ]
        if too_long:
            (i, n), more = too_long[0], len(too_long) - 1
            raise DataError(
                f"input line {i + 1}: {n} source positions (pieces and end of sentence), more than the {limit} the "
                f"model takes{f' ({more} more such lines)' if more else ''}; split it into sentences"
            )
        dataset = self.task.build_dataset_for_inference(tokens, [t.numel() for t in tokens])
        order = sorted(range(len(tokens)), key=lambda i: tokens[i].numel())
        out = [""] * len(lines)
        with self._torch.no_grad():
            for start in range(0, len(order), self.batch_size):
                sample = dataset.collater([dataset[i] for i in order[start : start + self.batch_size]])
                hypos = self.task.inference_step(self.generator, self.models, sample)
                for sample_id, hyp in zip(sample["id"].tolist(), hypos, strict=True):
                    pieces = tgt_dict.string(hyp[0]["tokens"].int().cpu())
                    out[todo[sample_id]] = pieces.replace(" ", "").replace("\u2581", " ").strip()
        return out


def which_training(run_dir: Path, checkpoint: Path, leaderboard: Path) -> tuple[int, str]:
    """What a translation is made with, as a log level and one line: the checkpoint's updates, the training that
    made it (its commit, machine and time, from ``train.json``), and that training's rows in ``leaderboard``.
    A warning when the training has not finished, when the weights are not the run's scored model (another
    folder's checkpoint, or the last one of a run that averages its checkpoints), or when the leaderboard's rows
    of the run id are of another training (trained again: the same run id, other weights)."""
    run_id, updates, record = run_dir.name, checkpoint_updates(checkpoint), RunFolder(run_dir).metrics
    average = recorded_average_last(run_dir)
    model = RunFolder(run_dir).model_checkpoint(average)
    averaged = average > 1 and checkpoint.resolve() == model.resolve()
    head = f"{run_id}: {checkpoint.name} at {updates} updates" + (f" (its last {average} averaged)" if averaged else "")
    if checkpoint.resolve().parent != RunFolder(run_dir).checkpoints.resolve():
        return logging.WARNING, (
            f"{run_id}: {checkpoint} at {updates} updates, not a checkpoint of this run folder: no recorded training "
            f"or leaderboard row of {run_id} is of these weights"
        )
    if not record.is_file():
        return logging.WARNING, f"{head}; its training has not finished ({record.name} missing)"
    metrics = json.loads(record.read_text())
    if metrics["updates"] != updates:
        return logging.WARNING, (
            f"{head}, but its finished training recorded {metrics['updates']} (trained on since, or the checkpoint "
            "was replaced): no recorded training or leaderboard row is of these weights"
        )
    if average > 1 and not averaged:
        return logging.WARNING, (
            f"{head}; the run's model, which its test sets were decoded with, is the average of its last {average} "
            f"checkpoints ({model.name}): no leaderboard row is of these weights"
        )
    ours = training({"train_commit": metrics.get("git_commit", ""), "train_seconds": metrics["wall_seconds"]})
    commit, machine = short_commit(ours[0]) or "an unrecorded commit", metrics.get("machine") or "an unrecorded machine"
    head += f", trained at {commit} on {machine} in {ours[1]} s"
    try:
        rows = [r for r in read_rows(leaderboard) if r["run_id"] == run_id]
    except (OSError, ValueError) as err:  # a leaderboard to fix by hand (or a folder) does not stop a translation
        return logging.WARNING, f"{head}; its scores are not looked up: {err}"
    scores = [f"{r['test_set']} BLEU {score_text(r['bleu'])}" for r in rows if training(r) == ours]
    if scores:
        return logging.INFO, f"{head}; its rows in {leaderboard}: {', '.join(scores)}"
    if rows:
        if repeated := [r for r in rows if _decodes_as(run_dir, r)]:  # trained again, to the same hypotheses
            scores = [f"{r['test_set']} BLEU {score_text(r['bleu'])}" for r in repeated]
            return logging.INFO, (
                f"{head}; rows of {run_id} in {leaderboard} are of another training ({_trainings(repeated)}), "
                f"whose hypotheses this training's own decoding repeats byte for byte: {', '.join(scores)}"
            )
        return logging.WARNING, (
            f"{head}; the rows of {run_id} in {leaderboard} are of another training ({_trainings(rows)}): "
            "their scores are not this checkpoint's"
        )
    return logging.INFO, f"{head}; no row of it in {leaderboard}"


def _trainings(rows: list[dict[str, str]]) -> str:
    """The trainings ``rows`` were scored from, as ``<commit> in <seconds> s``."""
    return ", ".join(sorted({f"{short_commit(c) or '?'} in {s or '?'} s" for c, s in map(training, rows)}))


def _decodes_as(run_dir: Path, row: dict[str, str]) -> bool:
    """Whether the run folder's own decoding of the row's test set is byte for byte the row's hypotheses."""
    run = RunFolder(run_dir)
    if not run.spec.is_file():
        return False
    mine = run.decoded(named_test_set(row["test_set"]), read_spec(run_dir).data.tgt)
    theirs = row_file(row["hypothesis"])
    return mine.is_file() and theirs.is_file() and mine.read_bytes() == theirs.read_bytes()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("run_dir", type=existing_dir, help="a run folder made by the pipeline (runs/<run id>)")
    p.add_argument("--beam", type=int_at_least(1), default=None, help="default: the run's own (train.beam)")
    p.add_argument(
        "--lenpen",
        type=finite_float,
        default=None,
        help="the beam search's length penalty (fairseq's --lenpen; default: the run's own, train.lenpen)",
    )
    p.add_argument(
        "--checkpoint",
        type=existing_file,
        default=None,
        help="translate with these weights (default: the run's scored model: checkpoint_last.pt, or "
        "checkpoint_average.pt where the run averages its checkpoints)",
    )
    p.add_argument(
        "--batch-size", type=int_at_least(1), default=64, help="sentences per beam-search batch (default: 64)"
    )
    p.add_argument(
        "--leaderboard",
        type=Path,
        default=ResultsFolder(RESULTS_DIR).leaderboard,
        help="where to look up the scores of the run's training, said on stderr (default: results/leaderboard.csv)",
    )
    p.add_argument(
        "--struct-impl",
        choices=IMPLS,
        default=None,
        help="the structured attention's kernel (default: the run's own; a run trained with triton: auto here)",
    )
    add_verbose_option(p)
    a = p.parse_args(argv)
    setup(a.verbose)
    run_dir = Path(os.path.abspath(a.run_dir))  # "." is the run of its folder (a link keeps its own name: its id)
    try:  # the run folder first: a wrong one is an error at once, not after stdin is read to its end
        translator = Translator(
            run_dir, beam=a.beam, lenpen=a.lenpen, batch_size=a.batch_size, checkpoint=a.checkpoint, impl=a.struct_impl
        )
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"error: {err}") from None
    try:  # what it is said to be made with: never a reason not to translate
        log.log(*which_training(run_dir, translator.checkpoint, a.leaderboard))
    except (OSError, ValueError, KeyError, TypeError) as err:
        log.warning(f"{run_dir.name}: which training made {translator.checkpoint.name} is not said ({err!r})")
    lines = read_input(sys.stdin.buffer.read())  # one output line per input line, whatever it holds
    try:
        translations = translator.translate(lines)
    except DataError as err:  # an input line the model cannot take: nothing written
        raise SystemExit(f"error: {err}") from None
    text = "".join(h + "\n" for h in translations)
    if (out := getattr(sys.stdout, "buffer", None)) is None:  # a text stream of the caller's (no bytes)
        sys.stdout.write(text)
        return
    sys.stdout.flush()
    out.write(text.encode("utf-8"))  # UTF-8, as the input, whatever the locale
    out.flush()


if __name__ == "__main__":
    main()

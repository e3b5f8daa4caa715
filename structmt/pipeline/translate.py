"""``structmt-translate RUN_DIR < src > hyp``: translate raw text with a trained run,
applying the run's own SentencePiece model and dictionary; output is
detokenized, one line per input line, in input order."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..checkpoints import load_model
from ..console import add_verbose_option, setup
from ..fairseq_cli import MAX_LEN_A, MAX_LEN_B, last_checkpoint
from ..files import existing_dir, int_at_least, text_lines, utf8_error_at
from .spec import Schedule


def read_input(raw: bytes) -> list[str]:
    """The lines of raw standard input (split as :func:`text_lines` does); invalid UTF-8 is an error naming the line."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line, _ = utf8_error_at(raw, err)
        raise SystemExit(f"error: standard input, line {line}: invalid UTF-8 ({err.reason}); give UTF-8 text") from None
    return text_lines(text)[0]


def model_dir(run_dir: Path) -> Path:
    """The folder holding the run's SentencePiece model and dictionaries (``RUN_DIR/model``)."""
    return run_dir / "model"


class Translator:
    """Beam search with one trained run; loads once, translates many batches.  ``beam``: the run's own
    (``train.beam``, as the pipeline decodes its test sets) unless given."""

    def __init__(self, run_dir: Path, *, beam: int | None = None, batch_size: int = 64, checkpoint: Path | None = None):
        import sentencepiece as spm
        import torch
        from fairseq.dataclass.configs import GenerationConfig

        run_dir = Path(run_dir)
        ckpt = checkpoint or last_checkpoint(run_dir)
        folder = model_dir(run_dir)
        for path in (ckpt, folder / "spm.model"):
            if not path.is_file():
                raise FileNotFoundError(f"{path} not found: is {run_dir} a finished structmt run folder?")
        spec_file = run_dir / "spec.json"
        if not spec_file.is_file():
            raise FileNotFoundError(f"{spec_file} not found: is {run_dir} a structmt run folder?")
        recorded = json.loads(spec_file.read_text())
        src, tgt = recorded["data"]["src"], recorded["data"]["tgt"]
        beam = beam or recorded.get("schedule", {}).get("beam", Schedule.beam)
        model, self.task = load_model(ckpt, folder, source_lang=src, target_lang=tgt)
        self.models = [model]
        self.sp = spm.SentencePieceProcessor(model_file=str(folder / "spm.model"))
        self.generator = self.task.build_generator(
            self.models, GenerationConfig(beam=beam, max_len_a=MAX_LEN_A, max_len_b=MAX_LEN_B)
        )
        self.batch_size = batch_size
        self._torch = torch

    def translate(self, lines: list[str]) -> list[str]:
        src_dict, tgt_dict = self.task.source_dictionary, self.task.target_dictionary
        tokens = [
            src_dict.encode_line(" ".join(self.sp.encode(line.strip(), out_type=str)), add_if_not_exist=False).long()
            for line in lines
        ]
        dataset = self.task.build_dataset_for_inference(tokens, [t.numel() for t in tokens])
        order = sorted(range(len(lines)), key=lambda i: tokens[i].numel())
        out = [""] * len(lines)
        with self._torch.no_grad():
            for start in range(0, len(order), self.batch_size):
                sample = dataset.collater([dataset[i] for i in order[start : start + self.batch_size]])
                hypos = self.task.inference_step(self.generator, self.models, sample)
                for sample_id, hyp in zip(sample["id"].tolist(), hypos, strict=True):
                    pieces = tgt_dict.string(hyp[0]["tokens"].int().cpu())
                    out[sample_id] = pieces.replace(" ", "").replace("\u2581", " ").strip()
        return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("run_dir", type=existing_dir, help="a run folder made by the pipeline (runs/<run id>)")
    p.add_argument("--beam", type=int_at_least(1), default=None, help="default: the run's own (train.beam)")
    p.add_argument(
        "--batch-size", type=int_at_least(1), default=64, help="sentences per beam-search batch (default: 64)"
    )
    add_verbose_option(p)
    a = p.parse_args(argv)
    setup(a.verbose)
    try:  # the run folder first: a wrong one is an error at once, not after stdin is read to its end
        translator = Translator(a.run_dir, beam=a.beam, batch_size=a.batch_size)
    except FileNotFoundError as err:
        raise SystemExit(f"error: {err}") from None
    lines = read_input(sys.stdin.buffer.read())  # one output line per input line, whatever it holds
    sys.stdout.write("".join(h + "\n" for h in translator.translate(lines)))


if __name__ == "__main__":
    main()

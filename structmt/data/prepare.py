"""Multi30k en→de preparation: fetch → decompress → clean → SentencePiece → binarize.

Every stage is idempotent (:class:`structmt.data.stages.Stage`).
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..console import say, say_once
from ..fairseq_cli import FAIRSEQ_PYTHON
from ..files import DataError, atomic_path, file_above, read_lines
from ..paths import DataFolder
from .fetch import MANIFESTS, MULTI30K_ENV, MULTI30K_SHARED, MULTI30K_URL, download_folder, fetch_files, read_checksums
from .stages import Stage

#: fairseq split name → Multi30k file stem
MULTI30K_SPLITS = {"train": "train", "valid": "val", "test": "test_2016_flickr", "test1": "test_2017_flickr"}


#: the joint SentencePiece vocabulary of each kind of data set, unless one is asked for
MULTI30K_VOCAB, WMT_VOCAB = 8000, 32000


@dataclass
class PrepConfig:
    src: str = "en"
    tgt: str = "de"
    vocab_size: int = MULTI30K_VOCAB
    max_tokens_per_sentence: int = 250  # whitespace tokens, cleaning filter
    max_length_ratio: float = 3.0
    max_train_lines: int = 0  # 0 = all; a slice for smoke tests
    max_eval_lines: int = 0  # 0 = all; slices valid/test too (smoke tests only)
    mirror: str | None = None

    def __post_init__(self) -> None:
        # structmt-prepare's --vocab-size and --max-train-lines arrive here unchecked (the pipeline checks data.*)
        checks = [
            ("vocab_size", self.vocab_size >= 1, "must be >= 1"),
            ("max_train_lines", self.max_train_lines >= 0, "must be >= 0 (0 = all)"),
            ("max_eval_lines", self.max_eval_lines >= 0, "must be >= 0 (0 = all)"),
        ]
        bad = [f"{name}={getattr(self, name)} {why}" for name, ok, why in checks if not ok]
        if bad:
            raise ValueError("; ".join(bad))


@dataclass
class CleanCounts:
    read: int = 0
    empty: int = 0
    too_long: int = 0
    bad_ratio: int = 0
    duplicate: int = 0
    kept: int = 0


def clean_pairs(src: list[str], tgt: list[str], cfg: PrepConfig) -> tuple[list[tuple[str, str]], CleanCounts]:
    """Drop empty lines, overlong sentences, extreme length ratios and duplicate pairs
    (the caller has checked that the sides are parallel)."""
    counts, seen, kept = CleanCounts(read=len(src)), set(), []
    for s, t in zip(src, tgt, strict=True):
        s, t = " ".join(s.split()), " ".join(t.split())
        ns, nt = len(s.split()), len(t.split())
        if not ns or not nt:
            counts.empty += 1
        elif max(ns, nt) > cfg.max_tokens_per_sentence:
            counts.too_long += 1
        elif max(ns, nt) > cfg.max_length_ratio * min(ns, nt) and max(ns, nt) > 5:
            counts.bad_ratio += 1
        elif (s, t) in seen:
            counts.duplicate += 1
        else:
            seen.add((s, t))
            kept.append((s, t))
    counts.kept = len(kept)
    return kept, counts


def _write_lines(path: Path, lines: list[str]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


#: a corpus to prepare: fairseq split name → list of (source file, target file), plain or .gz
Splits = dict[str, list[tuple[Path, Path]]]


def check_data_folder(out_dir: Path) -> None:
    """``out_dir`` can hold a preparation: SentencePiece and fairseq-preprocess take comma-separated lists of
    the files inside it, so a comma in its path would cut them apart."""
    if "," in str(out_dir):
        raise DataError(
            f"{out_dir}: SentencePiece and fairseq-preprocess read comma-separated lists of the files in the data "
            "folder, so its path must not contain a comma; choose another folder"
        )
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"{out_dir}: a file; give a folder for the prepared data")
    if blocking := file_above(out_dir):
        raise DataError(f"{out_dir}: {blocking} is a file, not a folder; give a folder for the prepared data")


def _read_split(split: str, pairs: list[tuple[Path, Path]], cfg: PrepConfig) -> tuple[list[str], list[str]]:
    """The source and target lines of one split, checked parallel; train is cleaned (counts printed)."""
    src_lines: list[str] = []
    tgt_lines: list[str] = []
    for src_path, tgt_path in pairs:
        s_lines, t_lines = read_lines(src_path), read_lines(tgt_path)
        if len(s_lines) != len(t_lines):
            raise DataError(
                f"parallel files differ in length: {src_path} has {len(s_lines)} lines, {tgt_path} has {len(t_lines)}"
            )
        src_lines += s_lines
        tgt_lines += t_lines
    files = ", ".join(f"{s} and {t}" for s, t in pairs)
    if split == "train":
        kept, counts = clean_pairs(src_lines, tgt_lines, cfg)
        if cfg.max_train_lines:
            kept = kept[: cfg.max_train_lines]
        say(f"[data] cleaning train: {asdict(counts)}; using {len(kept)} pairs")
        if not kept:
            raise DataError(f"train: no pair of {files} is left after cleaning ({asdict(counts)}); nothing to train on")
        return [p[0] for p in kept], [p[1] for p in kept]
    if not src_lines:
        raise DataError(f"{split}: {files} hold no lines; a {split} set needs sentences to score")
    if cfg.max_eval_lines:
        return src_lines[: cfg.max_eval_lines], tgt_lines[: cfg.max_eval_lines]
    return src_lines, tgt_lines


def fetch_multi30k(names: list[str], mirror: str | None, cache: Path) -> tuple[dict[str, Path], str]:
    """Verified copies of the Multi30k files ``names`` (``test_2016_flickr.de.gz``): from ``mirror``,
    ``$STRUCTMT_MULTI30K``, the download cache ``cache`` (downloading), else the offline mirror beside the
    checkout; and the sentence naming the source (:func:`~structmt.data.fetch.fetch_files`)."""
    return fetch_files(
        names,
        read_checksums(MANIFESTS / "multi30k.sha256"),
        url_template=MULTI30K_URL,
        mirror=mirror,
        env_var=MULTI30K_ENV,
        fallback=MULTI30K_SHARED,
        cache=cache,
    )


def prepare_multi30k(out_dir: Path, cfg: PrepConfig | None = None) -> Path:
    """Prepare Multi30k under ``out_dir``; returns the fairseq data-bin folder.  Downloads are kept beside it
    (:func:`~structmt.data.fetch.download_folder`)."""
    cfg = cfg or PrepConfig()
    langs = (cfg.src, cfg.tgt)
    names = [f"{stem}.{lang}.gz" for stem in MULTI30K_SPLITS.values() for lang in langs]
    paths, source = fetch_multi30k(names, cfg.mirror, download_folder(out_dir, names))
    # once per process and folder: a pipeline prepares (or finds prepared) its data at every step
    say_once(f"[data] Multi30k source: {source}", key=("multi30k source", next(iter(paths.values())).parent))
    splits = {
        split: [(paths[f"{stem}.{cfg.src}.gz"], paths[f"{stem}.{cfg.tgt}.gz"])]
        for split, stem in MULTI30K_SPLITS.items()
    }
    return prepare_parallel(out_dir, splits, cfg)


def prepare_parallel(out_dir: Path, splits: Splits, cfg: PrepConfig) -> Path:
    """raw (train cleaned) → joint SentencePiece → encode → binarize; every stage idempotent.

    ``splits`` must hold ``train`` and ``valid``; other names (``test``, ``test1``…)
    are test sets.  Returns the fairseq data-bin folder.
    """
    folder = DataFolder(Path(out_dir))
    refuse_foreign_files(folder.bin)  # before any work: its last stage replaces the folder
    langs = (cfg.src, cfg.tgt)
    inputs = [p for pairs in splits.values() for pair in pairs for p in pair]

    # 1. raw text (train cleaned, eval sets untouched: references stay raw)
    raw = folder.raw
    raw_out = [folder.text(split, lang) for split in splits for lang in langs]
    stage = Stage(
        "raw", raw, {"cfg": asdict(cfg) | {"vocab_size": None, "mirror": None}, "splits": list(splits)}, inputs, raw_out
    )

    def write_raw() -> None:
        # read and check every input before writing anything: bad data leaves no partial output
        texts = {split: _read_split(split, pairs, cfg) for split, pairs in splits.items()}
        for split, (src_lines, tgt_lines) in texts.items():
            _write_lines(folder.text(split, cfg.src), src_lines)
            _write_lines(folder.text(split, cfg.tgt), tgt_lines)

    if not stage.ensure(write_raw):
        say_once("[data] raw: up to date", key=("raw up to date", raw))

    # 2. joint SentencePiece model
    spm_dir, model = folder.spm, folder.spm_model
    train_text = [folder.text("train", lang) for lang in langs]
    prefix = model.with_suffix("")  # SentencePiece writes <prefix>.model and <prefix>.vocab
    Stage(
        "spm_train", spm_dir, {"vocab_size": cfg.vocab_size}, train_text, [model, prefix.with_suffix(".vocab")]
    ).ensure(lambda: train_sentencepiece(train_text, prefix, cfg.vocab_size))

    # 3. encode
    enc_out = [spm_dir / f"{split}.{lang}" for split in splits for lang in langs]

    def encode() -> None:
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor(model_file=str(model))
        for split in splits:
            for lang in langs:
                lines = folder.text(split, lang).read_text(encoding="utf-8").splitlines()
                _write_lines(spm_dir / f"{split}.{lang}", [" ".join(p) for p in sp.encode(lines, out_type=str)])

    Stage("spm_encode", spm_dir, {}, [model, *raw_out], enc_out).ensure(encode)

    # 4. binarize with a joined dictionary
    bin_dir = folder.bin
    bin_out = [folder.dictionary(lang) for lang in langs] + [
        bin_dir / f"{split}.{cfg.src}-{cfg.tgt}.{lang}.bin" for split in splits for lang in langs
    ]
    Stage("binarize", bin_dir, {"src": cfg.src, "tgt": cfg.tgt}, enc_out, bin_out).ensure(
        lambda: binarize(spm_dir, bin_dir, cfg.src, cfg.tgt, list(splits))
    )
    return bin_dir


def train_sentencepiece(inputs: list[Path], prefix: Path, vocab_size: int) -> None:
    """Train a joint unigram SentencePiece model; ``prefix.model`` appears only when complete."""
    import sentencepiece as spm

    prefix.parent.mkdir(parents=True, exist_ok=True)
    tmp_prefix = prefix.parent / f".{prefix.name}.tmp"
    try:
        _train(spm, inputs, tmp_prefix, vocab_size)
    except (RuntimeError, ValueError) as err:  # SentencePiece's own errors: RuntimeError, ValueError for the sizes
        why = next(iter(str(err).strip().splitlines()), "?")
        raise DataError(
            f"SentencePiece cannot train a vocabulary of {vocab_size} pieces on {', '.join(map(str, inputs))} "
            f"({why}); choose another size (structmt-prepare --vocab-size, structmt-run data.vocab_size)"
        ) from err
    pieces = spm.SentencePieceProcessor(model_file=f"{tmp_prefix}.model").get_piece_size()
    if pieces < vocab_size:
        say(
            f"[data] SentencePiece: the training text supports {pieces} pieces, fewer than the {vocab_size} asked "
            f"for; the vocabulary has {pieces}"
        )
    for ext in ("vocab", "model"):
        Path(f"{tmp_prefix}.{ext}").replace(f"{prefix}.{ext}")


def _train(spm: Any, inputs: list[Path], tmp_prefix: Path, vocab_size: int) -> None:
    spm.SentencePieceTrainer.train(
        input=",".join(str(p) for p in inputs),
        model_prefix=str(tmp_prefix),
        vocab_size=vocab_size,
        character_coverage=1.0,
        model_type="unigram",
        input_sentence_size=2_000_000,
        shuffle_input_sentence=True,
        hard_vocab_limit=False,  # small corpora get the largest vocabulary they support
        bos_id=-1,
        eos_id=-1,
        pad_id=-1,
        unk_id=0,
        minloglevel=2,
        num_threads=2,
    )


def binarize(text_dir: Path, bin_dir: Path, src: str, tgt: str, splits: list[str]) -> None:
    """``fairseq-preprocess`` with a joined dictionary, into a temp folder renamed into place."""
    import shutil

    refuse_foreign_files(bin_dir)
    tmp = bin_dir.parent / f".{bin_dir.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    prefs = {"train": "--trainpref", "valid": "--validpref"}
    cmd = [
        *FAIRSEQ_PYTHON,
        "-m",
        "fairseq_cli.preprocess",
        "--source-lang",
        src,
        "--target-lang",
        tgt,
        "--joined-dictionary",
        "--destdir",
        str(tmp),
        "--workers",
        "2",
    ]
    for split in ("train", "valid"):
        cmd += [prefs[split], str(text_dir / split)]
    tests = [s for s in splits if s.startswith("test")]
    # fairseq names the --testpref files test, test1, test2, ... by position, whatever their own names
    if tests != [f"test{i or ''}" for i in range(len(tests))]:
        raise ValueError(f"test splits {tests} must be test, test1, ... in order (fairseq names them by position)")
    tests = [str(text_dir / s) for s in tests]
    if tests:
        cmd += ["--testpref", ",".join(tests)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DataError(f"fairseq-preprocess failed:\n{result.stderr[-2000:]}")
    if bin_dir.exists():
        shutil.rmtree(bin_dir)
    tmp.replace(bin_dir)


#: what fairseq-preprocess writes into a data-bin folder, and the stamp of the stage that runs it
_BINARIZED = re.compile(r"dict\..+\.txt|.+\.(bin|idx)|preprocess\.log|\.binarize\.stamp")


def refuse_foreign_files(bin_dir: Path) -> None:
    """A data-bin folder is replaced whole when it is built again: refuse one that holds files fairseq-preprocess
    does not write (``structmt-prepare OUT`` given a folder of the user's own), which would be deleted."""
    foreign = sorted(p.name for p in bin_dir.iterdir() if not _BINARIZED.fullmatch(p.name)) if bin_dir.is_dir() else []
    if foreign:
        raise DataError(
            f"{bin_dir} holds files fairseq-preprocess does not write ({', '.join(foreign[:5])}"
            f"{', …' if len(foreign) > 5 else ''}), and preparing the data replaces the folder whole: move them, "
            "or prepare into another folder"
        )

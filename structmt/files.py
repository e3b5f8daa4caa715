"""File helpers shared by every part of structmt: atomic writes, reading text as lines,
argparse path types, and the error for an input file the user must fix."""

from __future__ import annotations

import argparse
import contextlib
import gzip
import math
import os
import secrets
import struct
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

from .console import remove_path, temporary_path


class DataError(RuntimeError):
    """A corpus problem the user must fix; the message says what and where."""


def _read_umask() -> int:
    mask = os.umask(0)  # reading the umask sets it: put it back at once (at import: no other thread yet)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def link_target(path: Path) -> Path:
    """``path`` with symbolic links resolved: the file a write should replace. A link into a folder that does not
    exist (a share not mounted) is an error: the file would be made under its mount point, out of sight."""
    target = Path(os.path.realpath(path))
    if Path(path).is_symlink() and not target.parent.is_dir():
        raise FileNotFoundError(f"{path} links to {target}, whose folder does not exist: mount it, or remove the link")
    return target


@contextlib.contextmanager
def new_temporary(folder: Path, prefix: str, suffix: str = "", *, directory: bool = False) -> Iterator[Path]:
    """A new empty file (a folder with ``directory``) ``folder/<prefix><random><suffix>``, private to this user,
    removed when the block ends unless the block moved it away, and by a SIGTERM. Its name is registered
    (:func:`temporary_path`) before it is made (``mkstemp`` makes the file before it can be registered: a SIGTERM
    between the two left it)."""
    for _ in range(100):
        tmp = folder / f"{prefix}{secrets.token_hex(8)}{suffix}"
        with temporary_path(tmp):
            try:
                if directory:
                    os.mkdir(tmp, 0o700)
                else:
                    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
            except FileExistsError:  # another's file of that name (64 random bits: in theory), registered until
                continue  # here, where a SIGTERM would remove it: draw another name
            try:
                yield tmp
            finally:
                remove_path(tmp)
            return
    raise FileExistsError(f"no new temporary name {prefix}…{suffix} in {folder} after 100 tries")


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place only on success. A symbolic link is
    followed (the file it names is replaced, the link stays). The file keeps the mode it had, or gets the
    one a plain ``open`` would give it (``0o666`` less the umask), not the temporary file's private ``0o600``."""
    path = link_target(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    old = path.stat() if path.is_file() else None
    mode = old.st_mode & 0o7777 if old else 0o666 & ~_UMASK
    with new_temporary(path.parent, f".{path.name}.", ".tmp") as tmp:  # removed by a SIGTERM too
        yield tmp
        _fsync(tmp)  # before it takes the old file's mode, which may not let its owner read it
        os.chmod(tmp, mode)
        if old is not None and old.st_gid != os.stat(tmp).st_gid:
            with contextlib.suppress(OSError):  # a shared file keeps its group where this user may set it
                os.chown(tmp, -1, old.st_gid)
        _rename_durably(tmp, path)


def _fsync(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_durably(tmp: str | Path, path: str | Path) -> None:
    """Rename the finished ``tmp`` onto ``path``, its content on the disk first: after a crash or a power cut
    ``path`` holds the old file or the whole new one, never a renamed file whose blocks were not yet written.
    The folder is synced after the rename where its file system allows it."""
    _fsync(tmp)
    _rename_durably(tmp, path)


def _rename_durably(tmp: str | Path, path: str | Path) -> None:
    os.replace(tmp, path)
    with contextlib.suppress(OSError):  # some file systems cannot sync a folder; the rename stands
        _fsync(Path(path).parent)


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def existing_file(value: str) -> Path:
    """argparse type for a path option that must be a file (argparse names the option on error)."""
    p = Path(value).expanduser()
    if p.is_dir():
        raise argparse.ArgumentTypeError(f"{value}: a folder; give a file")
    if not p.is_file():
        raise argparse.ArgumentTypeError(f"{value}: no such file")
    return p


def existing_dir(value: str) -> Path:
    """argparse type for a path option that must be a folder."""
    p = Path(value).expanduser()
    if p.exists() and not p.is_dir():
        raise argparse.ArgumentTypeError(f"{value}: a file; give a folder")
    if not p.is_dir():
        raise argparse.ArgumentTypeError(f"{value}: no such folder")
    return p


def file_above(path: Path) -> Path | None:
    """A file among the folders above ``path`` (nothing can be written there), or None."""
    return next((p for p in Path(path).parents if p.exists() and not p.is_dir()), None)


def output_dir(value: str) -> Path:
    """argparse type for a folder to write into (made when missing), checked before anything runs: not a file,
    and no file among the folders above it."""
    p = Path(value).expanduser()
    if p.exists() and not p.is_dir():
        raise argparse.ArgumentTypeError(f"{value}: a file; give a folder")
    if blocking := file_above(p):
        raise argparse.ArgumentTypeError(f"{value}: {blocking} is a file, not a folder")
    return p


def data_bin(value: str) -> Path:
    """argparse type for a fairseq data-bin: a folder with the dictionaries (``dict.<lang>.txt``)."""
    path = existing_dir(value)
    if not any(path.glob("dict.*.txt")):
        raise argparse.ArgumentTypeError(
            f"{value} is not a fairseq data-bin (no dict.*.txt): give the data-bin the model was trained on, "
            "e.g. runs/data/multi30k_en_de/bin"
        )
    return path


def split_problem(data_dir: Path, subset: str, option: str = "--subset") -> str:
    """What is wrong with decoding split ``subset`` of the data-bin ``data_dir`` (``<subset>.<pair>.<lang>.bin``
    files, as fairseq-preprocess writes them), or "" when nothing is; said naming ``option`` and the splits it has."""
    if not data_dir.is_dir():
        return f"{data_dir}: no such folder; give the data-bin the model was trained on"
    files = sorted(data_dir.glob(f"{subset}.*.bin"))
    if not files:
        splits = sorted({f.name.split(".")[0] for f in data_dir.glob("*.bin")})
        return f"{option} {subset}: {data_dir} has no such split (it has: {', '.join(splits) or 'none'})"
    sentences: dict[str, int] = {}
    for file in files:
        problem, count = _binarized_problem(file)
        if problem:
            return f"{option} {subset}: {problem}; binarize the data again (structmt-prepare, or fairseq-preprocess)"
        if count is not None:
            sentences[file.name] = count
    for pair in sorted({name.split(".")[1] for name in sentences}):  # a data-bin may hold several language pairs
        counts = {name: count for name, count in sentences.items() if name.split(".")[1] == pair}
        if len(set(counts.values())) > 1:
            said = ", ".join(f"{name} {count}" for name, count in counts.items())
            return f"{option} {subset}: its files hold different numbers of sentences ({said}); binarize it again"
    return ""


def _binarized_problem(file: Path) -> tuple[str, int | None]:
    """What is wrong with ``file`` (``<name>.bin``) and its index (``<name>.idx``), as fairseq-preprocess writes
    them in its default format ("" where nothing is), and the number of sentences its index gives (None where it
    cannot be read). A file cut short or empty failed deep in fairseq, naming none; another format of fairseq's is
    left to fairseq."""
    from fairseq.data.indexed_dataset import MMapIndexedDataset

    index_file = file.with_suffix(".idx")
    if not index_file.is_file():
        return f"{index_file} is missing", None
    magic = MMapIndexedDataset.Index._HDR_MAGIC
    with open(index_file, "rb") as f:
        begins = f.read(len(magic))
    if len(begins) < len(magic):
        return f"{index_file} is empty or cut short", None
    if begins != magic:
        return "", None
    try:
        index = MMapIndexedDataset.Index(str(index_file))
        count = len(index)
        pointer, size = index[count - 1] if count else (0, 0)
        needed = int(pointer) + int(size) * index.dtype().itemsize
    except (AssertionError, ValueError, KeyError, struct.error) as err:
        return f"{index_file} is damaged ({type(err).__name__}: {err})", None
    if count == 0:
        return f"{file} holds no sentences", count
    if (size_now := file.stat().st_size) < needed:
        return f"{file} is cut short ({size_now} bytes of the {needed} its index gives)", count
    return "", count


def finite_float(value: str) -> float:
    """argparse type for a finite number (``float`` alone lets ``nan`` and ``inf`` through)."""
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if not math.isfinite(number):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {value}")
    return number


def int_at_least(low: int, high: int | None = None) -> Callable[[str], int]:
    """argparse type for an integer option with a lower bound, and an upper one when given (argparse names
    the option on error)."""

    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{value!r} is not an integer") from None
        if number < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {number}")
        if high is not None and number > high:
            raise argparse.ArgumentTypeError(f"must be <= {high}, got {number}")
        return number

    return parse


#: characters that Python's ``str.splitlines`` and text-mode files treat as line ends, besides "\n"
_INNER_BREAKS = str.maketrans(dict.fromkeys("\r\v\f\x1c\x1d\x1e\x85\u2028\u2029", " "))


def text_lines(text: str) -> tuple[list[str], int]:
    """Split ``text`` on "\n" only (a final "\r" is dropped) and replace other line-break
    characters inside a line by spaces, so every later tool sees the same lines.
    Returns the lines and how many of them had such characters."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    out, changed = [], 0
    for line in lines:
        line = line.removesuffix("\r")
        fixed = line.translate(_INNER_BREAKS)
        changed += fixed != line
        out.append(fixed)
    return out, changed


def decode_utf8(raw: bytes, where: str, fix: str, error: type[Exception] = DataError) -> str:
    """``raw`` as UTF-8 text; bytes that are not are an ``error`` that names ``where`` (a file, say), the line,
    the byte and ``fix`` (what the user is to do)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line, column = raw.count(b"\n", 0, err.start) + 1, err.start - (raw.rfind(b"\n", 0, err.start) + 1)
        raise error(
            f"{where}:{line}: invalid UTF-8 at byte {column} of the line (0x{raw[err.start]:02x}: {err.reason}); {fix}"
        ) from None


def read_lines(path: Path) -> list[str]:
    """Read a UTF-8 text file, gzipped or not; errors name the file and line."""
    try:
        if path.suffix == ".gz":
            if path.stat().st_size == 0:  # gzip reads an empty file as empty text
                raise EOFError("empty .gz file")
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except (EOFError, OSError, zlib.error) as err:
        raise DataError(f"{path}: cannot read ({err}); if it is a truncated download, fetch it again") from err
    text = decode_utf8(raw, str(path), "fix or remove the line")
    lines, changed = text_lines(text.removeprefix("\ufeff"))  # a byte-order mark is no text (nor a reference's)
    if changed:
        print(f"[data] {path}: {changed} lines held line-break characters (\\r, U+2028…); replaced by spaces")
    return lines

"""WMT recipes (WMT14 en→de, WMT16 en→ro): training corpora from the URLs in
``data/<name>.json`` (verified by SHA-256), valid/test sets through sacreBLEU's
own downloader (which checks its published MD5s), then the shared
clean → SentencePiece → binarize stages.
"""

from __future__ import annotations

import json
import lzma
import re
import shutil
import tarfile
import urllib.error
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..console import say_once
from ..files import DataError, replace_durably, write_text_atomic
from .fetch import (
    MANIFESTS,
    ChecksumMismatch,
    download,
    download_folder,
    download_lock,
    is_sha256,
    read_checksums,
    verify,
)
from .prepare import WMT_VOCAB, PrepConfig, Splits, prepare_parallel
from .stages import Stage, sha256_file

RECIPES = ("wmt14_en_de", "wmt16_en_ro")


def load_manifest(name: str, manifests: Path = MANIFESTS) -> dict[str, Any]:
    """The recipe ``data/<name>.json``, checked whole before anything is downloaded (a key missing or of the
    wrong kind is a ``DataError`` naming the file and the key)."""
    path = manifests / f"{name}.json"
    if not path.is_file():
        raise DataError(f"no recipe {name!r}: {path} does not exist (known: {', '.join(RECIPES)})")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DataError(f"{path}:{err.lineno}: invalid JSON ({err.msg})") from None
    if problems := _manifest_problems(manifest):
        raise DataError(f"{path}: " + "; ".join(problems) + " (data/wmt14_en_de.json shows the format)")
    # archives are cached, and members extracted, by file name: two of one name would overwrite each other
    archives = [archive_name(entry["archive"]) for entry in manifest["train"]]
    if len(set(archives)) < len(archives):
        raise DataError(f"{path}: two training archives share a file name ({', '.join(archives)}); rename one")
    for entry in manifest["train"]:
        if Path(entry["src"]).name == Path(entry["tgt"]).name:
            raise DataError(f"{path}: {entry['archive']}: src and tgt members share the file name {entry['src']!r}")
    return manifest


def _manifest_problems(manifest: Any) -> list[str]:
    """What a recipe lacks: ``src``/``tgt`` names, a non-empty ``train`` list of archives (``archive``, ``src`` and
    ``tgt`` member names, ``sha256``: 64 hex digits or null) and ``valid``/``test`` sacreBLEU sets."""
    if not isinstance(manifest, dict):
        return ["the recipe must be a JSON object"]

    def text(value: Any) -> bool:
        return isinstance(value, str) and value.strip() != ""

    bad = [f"{key!r} must be a language code" for key in ("src", "tgt") if not text(manifest.get(key))]
    train = manifest.get("train")
    if not isinstance(train, list) or not train:
        bad.append("'train' must be a non-empty list of archives")
    else:
        for i, entry in enumerate(train):
            where = f"train[{i}]"
            if not isinstance(entry, dict):
                bad.append(f"{where} must be an object")
                continue
            bad += [
                f"{where}.{key} must be a non-empty string"
                for key in ("archive", "src", "tgt")
                if not text(entry.get(key))
            ]
            if entry.get("sha256") is not None and not is_sha256(entry["sha256"]):
                bad.append(f"{where}.sha256 must be 64 hex digits, or null (recorded on first download)")
    for split in ("valid", "test"):
        if not isinstance(manifest.get(split), dict) or not all(
            text(manifest[split].get(key)) for key in ("sacrebleu", "name")
        ):
            bad.append(f'{split!r} must name a sacreBLEU test set: {{"sacrebleu": ..., "name": ...}}')
        elif not re.fullmatch(r"[A-Za-z0-9_-]+", manifest[split]["name"]):  # e.g. newstest2014
            # it names files (<run>.<name>.<lang>: a dot in it hides a first evaluation), rows and W&B keys
            bad.append(f"{split}.name {manifest[split]['name']!r} must be letters, digits, '_' and '-' only")
    return bad


def archive_name(url: str) -> str:
    """The file name an archive is cached under (the last part of its URL)."""
    return url.rstrip("/").rsplit("/", 1)[-1]


def fetch_archive(url: str, sha256: str | None, cache: Path, base_url: str | None = None) -> tuple[Path, str]:
    """Download (once) and verify one archive; returns it and its SHA-256.

    With no published checksum, the SHA-256 of the archive first seen (downloaded, or placed in the cache
    by hand) is recorded beside it and every later run verifies against that record.  Jobs that share the
    download folder take turns (:func:`~structmt.data.fetch.download_lock`), so one archive is fetched and
    recorded once.
    """
    with download_lock(cache):
        return _fetch_archive(url, sha256, cache, base_url)


def _fetch_archive(url: str, sha256: str | None, cache: Path, base_url: str | None) -> tuple[Path, str]:
    name = archive_name(url)
    dest = cache / name
    record = cache / f"{name}.sha256"
    source = f"{base_url.rstrip('/')}/{name}" if base_url else url
    expected = sha256 or (_recorded(record, name) if record.exists() else None)
    try:
        damaged = ""
        if dest.exists() and expected:
            try:
                verify(dest, expected)
            except ChecksumMismatch as err:  # a damaged copy in the cache: fetched again, as Multi30k's files are
                damaged = f"{err} "
                print(f"[data] {dest}: not the archive recorded; downloading it again", flush=True)
        if damaged or not dest.exists():
            try:
                download(source, dest, expected)  # complete and verified before it takes dest's name
            except (urllib.error.URLError, OSError, TimeoutError) as err:
                raise DataError(
                    f"{damaged}cannot download {source} ({err}); give a mirror (data.base_url=... for structmt-run, "
                    f"--base-url for structmt-prepare), or place the file at {dest}"
                ) from err
    except ChecksumMismatch as err:
        if sha256:
            raise
        raise ChecksumMismatch(
            f"{err} The expected sha256 is the one recorded in {record} when the archive was first seen (it has "
            f"no published checksum); if that first copy was itself bad, delete {record} too."
        ) from None
    if not expected:
        check_archive(dest)  # damaged archives are not trusted
        expected = sha256_file(dest)
        write_text_atomic(record, f"{expected}  {name}\n")
        print(f"[data] {name}: no published checksum; recorded sha256 {expected} (trust on first use)", flush=True)
    return dest, expected


def _recorded(record: Path, name: str) -> str:
    """The SHA-256 that ``record`` holds for the archive ``name`` (``sha256sum`` format)."""
    recorded = read_checksums(record).get(name)
    if recorded is None:
        raise DataError(f"{record} holds no sha256 of {name}; delete it (the archive is recorded again when next seen)")
    return recorded


def check_archive(archive: Path) -> None:
    """Read all of ``archive`` (a zip, or a tar, plain or compressed), so that every check its format has is made:
    each zip member's CRC-32, each tar header's checksum, and a compressed stream's own check (gzip's CRC-32 and
    length, bzip2's and xz's). ``tarfile`` stops after the last member and never reads gzip's trailer, so a
    damaged .tgz extracts other text without an error: read it to its end before its checksum is trusted."""
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as z:
                if (bad := z.testzip()) is not None:
                    raise zipfile.BadZipFile(f"member {bad!r} fails its CRC-32 check")
            return
        with tarfile.open(archive) as t:
            for _ in t:  # every header
                pass
            while t.fileobj.read(1 << 20):  # the compressed stream to its end (its trailer: the check)
                pass
    except _ARCHIVE_ERRORS as err:
        raise DataError(_damaged(archive, err)) from err


#: what reading a damaged archive raises (gzip.BadGzipFile is an OSError)
_ARCHIVE_ERRORS = (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError)


def _damaged(archive: Path, err: BaseException) -> str:
    record = archive.parent / f"{archive.name}.sha256"
    also = f" and its recorded checksum {record}" if record.exists() else ""
    return f"{archive}: a damaged or unreadable archive ({err}); delete it{also}, and download it again"


def extract_members(archive: Path, sha256: str, members: list[str], dest: Path) -> list[Path]:
    """Extract the named members (only those, never outside ``dest``), atomically; again whenever the
    archive (its ``sha256``) or the members change."""
    out = [dest / Path(m).name for m in members]
    Stage("extract", dest, {"archive": sha256, "members": members}, [], out).ensure(
        lambda: _extract(archive, members, dest)
    )
    return out


def _extract(archive: Path, members: list[str], dest: Path) -> None:
    tmp = dest.parent / f".{dest.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        for member, data in _read_members(archive, members):
            (tmp / Path(member).name).write_bytes(data)
        dest.mkdir(parents=True, exist_ok=True)
        for p in tmp.iterdir():
            replace_durably(p, dest / p.name)  # on the disk before the stage's stamp vouches for it
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _read_members(archive: Path, members: list[str]) -> Iterator[tuple[str, bytes]]:
    """Each member's bytes in turn (one in memory at a time); an archive that cannot be read is a ``DataError``
    saying so (an error writing them is not the archive's)."""

    def check(names: set[str]) -> None:
        for m in members:
            if m not in names:
                raise DataError(f"{archive} has no member {m!r}; fix the recipe in data/*.json")

    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as z:
                check(set(z.namelist()))
                for m in members:
                    yield m, z.read(m)
        else:
            with tarfile.open(archive) as t:
                check(set(t.getnames()))
                for m in members:
                    f = t.extractfile(m)
                    if f is None:
                        raise DataError(f"{archive}: member {m!r} is not a regular file")
                    yield m, f.read()
    except _ARCHIVE_ERRORS as err:
        raise DataError(_damaged(archive, err)) from err


def sacrebleu_set(test_set: str, src: str, tgt: str) -> tuple[Path, Path]:
    """Source and reference files of a sacreBLEU test set (downloaded and checked by sacreBLEU)."""
    from sacrebleu.dataset import DATASETS

    if test_set not in DATASETS:
        raise DataError(f"sacreBLEU knows no test set {test_set!r}")
    dataset = DATASETS[test_set]
    pair = f"{src}-{tgt}"
    try:
        dataset.process_to_text(pair)
        return Path(dataset.get_source_file(pair)), Path(dataset.get_reference_files(pair)[0])
    except Exception as err:  # sacreBLEU raises plain exceptions on network errors
        raise DataError(
            f"sacreBLEU could not provide {test_set} {pair} ({err}); it needs network access once, "
            "or a filled cache under $SACREBLEU (default ~/.sacrebleu)"
        ) from err


def prepare_wmt(
    name: str,
    out_dir: Path,
    cfg: PrepConfig | None = None,
    *,
    base_url: str | None = None,
    manifests: Path = MANIFESTS,
) -> Path:
    """Fetch and prepare a WMT recipe; returns its fairseq data-bin folder.

    ``base_url`` replaces the host part of every training-corpus URL (a mirror).  The archives (and their
    trust-on-first-use records) are kept beside ``out_dir`` (:func:`~structmt.data.fetch.download_folder`).
    """
    manifest = load_manifest(name, manifests)
    cfg = cfg or PrepConfig(src=manifest["src"], tgt=manifest["tgt"], vocab_size=WMT_VOCAB)
    if (cfg.src, cfg.tgt) != (manifest["src"], manifest["tgt"]):
        raise DataError(f"{name} is {manifest['src']}→{manifest['tgt']}, not {cfg.src}→{cfg.tgt}")
    out_dir = Path(out_dir)
    archives = [archive_name(entry["archive"]) for entry in manifest["train"]]
    cache = download_folder(out_dir, archives + [f"{a}.sha256" for a in archives])  # the archives, their records
    train_pairs = []
    for entry in manifest["train"]:
        archive, sha256 = fetch_archive(entry["archive"], entry.get("sha256"), cache, base_url)
        src_file, tgt_file = extract_members(
            archive, sha256, [entry["src"], entry["tgt"]], out_dir / "extracted" / archive.name
        )
        train_pairs.append((src_file, tgt_file))
    splits: Splits = {"train": train_pairs}
    for split in ("valid", "test"):
        splits[split] = [sacrebleu_set(manifest[split]["sacrebleu"], cfg.src, cfg.tgt)]
    say_once(f"[data] {name}: {len(train_pairs)} training corpora; valid/test from sacreBLEU", key=(name, out_dir))
    return prepare_parallel(out_dir, splits, cfg)

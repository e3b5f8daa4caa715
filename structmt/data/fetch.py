"""Find or download corpus files, verifying SHA-256 checksums."""

from __future__ import annotations

import http.client
import math
import os
import re
import time
import urllib.error
import urllib.request
from pathlib import Path

from filelock import FileLock

from ..files import DataError, atomic_path
from ..paths import REPO_ROOT
from .stages import sha256_file

MANIFESTS = REPO_ROOT / "data"
MULTI30K_URL = "https://github.com/multi30k/dataset/raw/master/data/task1/raw/{name}"
MULTI30K_ENV = "STRUCTMT_MULTI30K"
MULTI30K_SHARED = REPO_ROOT.parent / "shared" / "data" / "multi30k"


def download_folder(out_dir: Path, names: list[str]) -> Path:
    """Where the downloads of the data folder ``out_dir`` are kept: ``download`` beside it, one folder for
    every data folder there (``runs/data/download`` for the pipeline's), so another vocabulary or slice
    downloads nothing again and trusts the same archive bytes.  The files ``names`` (this data's downloads and
    their records) that an older checkout kept in ``out_dir/download`` move there (each is verified when used,
    as every download is); nothing else in that folder is touched, and it is removed only once empty."""
    out_dir = Path(out_dir)
    shared = out_dir.parent / "download"
    legacy = out_dir / "download"
    if legacy.is_dir():
        for name in names:
            if (legacy / name).is_file() and not (shared / name).exists():
                shared.mkdir(parents=True, exist_ok=True)
                os.replace(legacy / name, shared / name)
        if not any(legacy.iterdir()):
            legacy.rmdir()
    return shared


def download_lock(cache: Path) -> FileLock:
    """The lock of a download folder: jobs preparing other data folders never fetch one file at once."""
    cache.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(cache.parent / f".{cache.name}.lock"))


def is_sha256(text: object) -> bool:
    """Whether ``text`` is a SHA-256 digest (64 hex digits, either case: ``sha256sum`` writes lower case,
    PowerShell's ``Get-FileHash`` upper case)."""
    return isinstance(text, str) and re.fullmatch(r"[0-9a-fA-F]{64}", text) is not None


def read_checksums(path: Path) -> dict[str, str]:
    """``sha256sum`` format: ``<hex>  <name>`` per line."""
    sums = {}
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not is_sha256(parts[0]):
            raise DataError(f"{path}:{lineno}: expected '<sha256>  <file name>', got {line!r}")
        sums[parts[1].lstrip("*")] = parts[0].lower()
    return sums


class ChecksumMismatch(DataError):
    """A file's SHA-256 is not the expected one."""


def verify(path: Path, expected: str, shown: Path | str | None = None) -> None:
    """Check ``path``'s SHA-256; the error names ``shown`` (what the user knows the file as) or ``path``."""
    actual = sha256_file(path)
    if actual != expected.lower():
        raise ChecksumMismatch(
            f"checksum mismatch for {shown or path}: expected sha256 {expected}, got {actual}. "
            "The file is corrupt or not the published one; delete it and fetch it again."
        )


# url -> (when, why) its download last failed in this process: a pipeline prepares its data at every step, and
# a node whose connections hang would otherwise wait out the timeout at each of them.  Tried again after
# RETRY_AFTER_S, so one failure does not outlast a network blip in a long sweep process.
_FAILED_DOWNLOADS: dict[str, tuple[float, str]] = {}
RETRY_AFTER_S = 600.0


def download(url: str, dest: Path, expected: str | None, timeout: float = 20.0) -> None:
    """Download ``url`` to ``dest`` atomically; nothing is left behind unless every byte the server announced
    arrived (an ``OSError`` otherwise, as for any failed transfer) and the checksum matches (``expected=None``:
    no checksum to check).  A transfer that failed is not tried again in the same process for
    :data:`RETRY_AFTER_S` (the same ``OSError``, saying so)."""
    when, why = _FAILED_DOWNLOADS.get(url, (-math.inf, ""))
    if time.monotonic() - when < RETRY_AFTER_S:
        raise OSError(f"{why} (failed earlier in this process; not tried again for {RETRY_AFTER_S:.0f} s)")
    try:
        _download(url, dest, expected, timeout)
    except OSError as err:
        _FAILED_DOWNLOADS[url] = (time.monotonic(), str(err))
        raise


def _download(url: str, dest: Path, expected: str | None, timeout: float) -> None:
    with atomic_path(dest) as tmp:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as out:
                announced = response.headers.get("Content-Length")
                received = 0
                while block := response.read(1 << 20):
                    out.write(block)
                    received += len(block)
        except http.client.HTTPException as err:  # a chunked transfer cut short, a garbled reply: not OSErrors
            raise OSError(f"incomplete download of {url}: {err!r}") from err
        if announced is not None and announced.isdigit() and received != int(announced):
            raise OSError(f"incomplete download of {url}: {received} of {announced} bytes")
        if expected is not None:
            verify(tmp, expected, shown=f"{dest.name} downloaded from {url}")


def fetch_files(
    names: list[str],
    checksums: dict[str, str],
    *,
    url_template: str,
    mirror: str | None,
    env_var: str,
    fallback: Path | None,
    cache: Path,
) -> tuple[dict[str, Path], str]:
    """Locate verified copies of ``names``.

    Order: a mirror given by configuration, then ``$env_var``, then the
    download cache (downloading what is missing), then ``fallback``.
    Returns the paths and a sentence saying which source was used.
    """
    missing = [n for n in names if n not in checksums]
    if missing:
        raise DataError(f"no checksum for {missing} in the manifest; add them to data/*.sha256")
    for label, folder in (("configured mirror", mirror), (f"${env_var}", os.environ.get(env_var))):
        if folder:
            root = Path(folder).expanduser()
            absent = [n for n in names if not (root / n).is_file()]
            if absent:
                raise DataError(
                    f"{label} {root} lacks {', '.join(absent)}; point it at a folder holding the corpus files"
                )
            for n in names:
                verify(root / n, checksums[n])
            return {n: root / n for n in names}, f"{label} {root}"
    name = names[0]
    try:
        with download_lock(cache):
            for name in names:
                dest = cache / name
                if dest.exists():
                    try:
                        verify(dest, checksums[name])
                        continue
                    except ChecksumMismatch:  # a damaged copy in the cache: fetched again, not kept
                        dest.unlink()
                download(url_template.format(name=name), dest, checksums[name])
        return {n: cache / n for n in names}, f"download cache {cache} (from {url_template.format(name='…')})"
    except (urllib.error.URLError, OSError, TimeoutError, ChecksumMismatch) as err:  # a corrupt download too
        failed = f"cannot download {url_template.format(name=name)} ({err})"
        absent = [n for n in names if fallback is None or not (fallback / n).is_file()]
        if fallback is not None and not absent:
            for n in names:
                verify(fallback / n, checksums[n])
            return {n: fallback / n for n in names}, f"offline mirror {fallback} (download failed: {err})"
        where = f"the offline mirror {fallback} lacks {', '.join(absent)}" if fallback else "no offline mirror"
        place = f", or place them in {fallback}" if fallback else ""
        raise DataError(
            f"{failed}, and {where}. Set ${env_var} (or data.mirror=... for structmt-run, --mirror for "
            f"structmt-prepare) to a folder with the corpus files{place}"
        ) from err

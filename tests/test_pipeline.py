"""Pipeline pieces: idempotent data stages, verified downloads, scoring, leaderboard, W&B."""

import gzip
import hashlib
import http.server
import multiprocessing
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import pytest

from structmt.data import fetch, wmt
from structmt.data.fetch import download_lock, fetch_files, read_checksums
from structmt.data.prepare import PrepConfig, prepare_multi30k
from structmt.data.stages import Stage, sha256_file
from structmt.files import DataError
from structmt.leaderboard_csv import fill_empty
from structmt.pipeline import leaderboard
from structmt.pipeline.evaluation import score
from structmt.pipeline.tracking import WandbSettings, log_experiment


def _stamps(out: Path) -> dict[str, float]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in out.rglob(".*.stamp")}


def test_stages_are_idempotent_and_rerun_only_what_changed(tmp_path, capsys):
    cfg = PrepConfig(vocab_size=400, max_train_lines=800, max_eval_lines=20)
    prepare_multi30k(tmp_path, cfg)
    first = _stamps(tmp_path)
    assert set(first) == {"raw/.raw.stamp", "spm/.spm_train.stamp", "spm/.spm_encode.stamp", "bin/.binarize.stamp"}
    capsys.readouterr()
    prepare_multi30k(tmp_path, cfg)
    assert _stamps(tmp_path) == first  # nothing rebuilt
    assert "raw: up to date" in capsys.readouterr().out
    cfg.vocab_size = 300
    prepare_multi30k(tmp_path, cfg)
    second = _stamps(tmp_path)
    assert second["raw/.raw.stamp"] == first["raw/.raw.stamp"]  # raw text does not depend on the vocabulary
    assert all(second[k] != first[k] for k in first if not k.startswith("raw/"))
    assert len((tmp_path / "bin" / "dict.en.txt").read_text().splitlines()) <= 300  # padded to a multiple of 8


def test_a_stage_interrupted_part_way_is_rebuilt_even_under_the_settings_of_its_old_stamp(tmp_path, monkeypatch):
    """Build at one vocabulary, rebuild at another killed after the first encoded file, go back to the
    first: the encoded files must all be the first vocabulary's again (an old stamp left in place while a
    stage rewrote its outputs vouched for a mix of both)."""
    import structmt.data.prepare as prepare

    cfg = PrepConfig(vocab_size=400, max_train_lines=300, max_eval_lines=20)
    prepare_multi30k(tmp_path / "clean", cfg)
    prepare_multi30k(tmp_path / "out", cfg)
    write = prepare._write_lines

    def killed_after_one(path, lines):
        write(path, lines)
        if path.parent.name == "spm":
            raise KeyboardInterrupt

    monkeypatch.setattr(prepare, "_write_lines", killed_after_one)
    with pytest.raises(KeyboardInterrupt):
        prepare_multi30k(tmp_path / "out", PrepConfig(vocab_size=300, max_train_lines=300, max_eval_lines=20))
    assert not (tmp_path / "out" / "spm" / ".spm_encode.stamp").exists()
    monkeypatch.setattr(prepare, "_write_lines", write)
    prepare_multi30k(tmp_path / "out", cfg)
    for name in ("train.en", "train.de", "valid.en"):
        assert (tmp_path / "out" / "spm" / name).read_bytes() == (tmp_path / "clean" / "spm" / name).read_bytes()
    assert (tmp_path / "out" / "bin" / "dict.en.txt").read_bytes() == (
        tmp_path / "clean" / "bin" / "dict.en.txt"
    ).read_bytes()


def test_a_stage_runs_again_for_an_output_removed_or_an_input_of_other_content_or_name(tmp_path):
    """Its stamp vouches for its settings, its inputs' names and contents, and outputs that are all there."""
    source, out = tmp_path / "a.txt", tmp_path / "out"
    source.write_text("one\n")
    out.mkdir()
    built = []

    def build():
        built.append(source.read_text())
        (out / "a.tok").write_text("tokens\n")

    def stage(inputs=(source,), settings=None):
        return Stage("tok", out, settings or {"lower": True}, list(inputs), [out / "a.tok"])

    assert stage().ensure(build) and not stage().ensure(build)
    (out / "a.tok").unlink()
    assert stage().ensure(build)  # an output removed since
    source.write_text("two\n")
    assert stage().ensure(build) and not stage().ensure(build)  # an input of other content
    (tmp_path / "b.txt").write_text("two\n")
    assert stage([tmp_path / "b.txt"]).ensure(build)  # another input of the same content
    assert stage([tmp_path / "b.txt"], {"lower": False}).ensure(build)  # other settings
    assert built == ["one\n", "one\n", "two\n", "two\n", "two\n"]
    assert (out / ".tok.stamp").read_text() == stage([tmp_path / "b.txt"], {"lower": False}).key + "\n"
    big = tmp_path / "corpus.txt"  # read in blocks: every one of them hashed
    big.write_bytes(b"a" * (3 << 20) + b"b")
    assert sha256_file(big) == hashlib.sha256(big.read_bytes()).hexdigest()


def _gz(path: Path, lines: list[str]) -> str:
    path.write_bytes(gzip.compress("".join(line + "\n" for line in lines).encode()))
    return hashlib.sha256(path.read_bytes()).hexdigest()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass


class _CutShort(_Quiet):
    """Announces the whole file (Content-Length) and closes the connection after half of it."""

    def copyfile(self, source, outputfile):
        data = source.read()
        outputfile.write(data[: len(data) // 2])


def _serve(tmp_path: Path, handler_class: type):
    root = tmp_path / "served"
    root.mkdir()
    handler = lambda *a, **k: handler_class(*a, directory=str(root), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}/{{name}}"
    server.shutdown()


@pytest.fixture
def http_root(tmp_path):
    """A local HTTP server on 127.0.0.1 serving ``tmp_path/served``."""
    yield from _serve(tmp_path, _Quiet)


class _CutChunked(_Quiet):
    """A chunked transfer (no Content-Length) whose connection drops inside its first chunk."""

    protocol_version = "HTTP/1.1"

    def do_GET(self):
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.write(b"400\r\n" + b"x" * 100)  # announces 1024 bytes, sends 100, closes
        self.close_connection = True


@pytest.fixture
def chunked_http_root(tmp_path):
    """Like :func:`http_root`, but every transfer is chunked and stops inside its first chunk."""
    yield from _serve(tmp_path, _CutChunked)


@pytest.fixture
def cut_http_root(tmp_path):
    """Like :func:`http_root`, but every transfer stops half-way (the connection dropped)."""
    yield from _serve(tmp_path, _CutShort)


def _fetch_args(tmp_path: Path, url_template: str = "http://127.0.0.1:9/{name}", **changed) -> dict:
    """fetch_files' keyword arguments: a download that fails at once, no mirror, no offline mirror."""
    args = dict(
        url_template=url_template, mirror=None, env_var="STRUCTMT_MULTI30K", fallback=None, cache=tmp_path / "c"
    )
    return args | changed


@pytest.mark.reliability  # docs/reliability.md
def test_a_download_cut_short_is_never_kept_and_falls_back_to_the_mirror(cut_http_root, tmp_path, monkeypatch):
    monkeypatch.delenv("STRUCTMT_MULTI30K", raising=False)
    root, url = cut_http_root
    good = _gz(root / "a.en.gz", ["hello world"] * 50)
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "a.en.gz").write_bytes((root / "a.en.gz").read_bytes())
    cache = tmp_path / "cache"
    paths, source = fetch_files(
        ["a.en.gz"], {"a.en.gz": good}, **_fetch_args(tmp_path, url, cache=cache, fallback=mirror)
    )
    assert paths["a.en.gz"] == mirror / "a.en.gz"
    assert source.startswith(f"offline mirror {mirror} (download failed: incomplete download of ")
    assert not cache.exists() or list(cache.iterdir()) == []
    # without a mirror: an error saying how much arrived
    with pytest.raises(DataError, match=r"incomplete download of .*a\.en\.gz: \d+ of \d+ bytes"):
        fetch_files(["a.en.gz"], {"a.en.gz": good}, **_fetch_args(tmp_path, url, cache=cache))


@pytest.mark.parametrize("corpus", ["multi30k", "wmt"])
def test_a_download_waits_for_its_folders_lock(http_root, tmp_path, monkeypatch, corpus):
    """Jobs preparing other data folders share one download folder: while another holds its lock (fetching the
    same file), this one downloads nothing; then it takes the file from there."""
    monkeypatch.delenv("STRUCTMT_MULTI30K", raising=False)
    root, url = http_root
    good = _gz(root / "a.en.gz", ["hello world"])
    cache = tmp_path / "cache"
    if corpus == "multi30k":
        get = lambda: fetch_files(["a.en.gz"], {"a.en.gz": good}, **_fetch_args(tmp_path, url, cache=cache))  # noqa: E731
    else:
        get = lambda: wmt.fetch_archive(url.format(name="a.en.gz"), good, cache)  # noqa: E731
    done: list = []
    with download_lock(cache):
        job = threading.Thread(target=lambda: done.append(get()))
        job.start()
        job.join(1.0)
        assert job.is_alive() and not (cache / "a.en.gz").exists()
    job.join(30)
    assert not job.is_alive() and (cache / "a.en.gz").read_bytes() == (root / "a.en.gz").read_bytes()
    assert done[0][0] == ({"a.en.gz": cache / "a.en.gz"} if corpus == "multi30k" else cache / "a.en.gz")


@pytest.mark.reliability  # docs/reliability.md
def test_a_chunked_download_cut_short_falls_back_to_the_mirror(chunked_http_root, tmp_path, monkeypatch):
    # http.client's IncompleteRead is no OSError: it escaped the fallback, and the run stopped naming no file
    monkeypatch.delenv("STRUCTMT_MULTI30K", raising=False)
    _, url = chunked_http_root
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    good = _gz(mirror / "a.en.gz", ["hello world"])
    paths, source = fetch_files(["a.en.gz"], {"a.en.gz": good}, **_fetch_args(tmp_path, url, fallback=mirror))
    assert paths["a.en.gz"] == mirror / "a.en.gz"
    assert source.startswith(f"offline mirror {mirror} (download failed: incomplete download of ")
    assert list((tmp_path / "c").iterdir()) == []


def test_the_error_names_the_file_that_failed_and_a_damaged_cached_copy_is_fetched_again(
    http_root, tmp_path, monkeypatch
):
    monkeypatch.delenv("STRUCTMT_MULTI30K", raising=False)
    root, url = http_root
    sums = {"a.en.gz": _gz(root / "a.en.gz", ["hello"]), "a.de.gz": _gz(tmp_path / "a.de.gz", ["hallo"])}
    cache = tmp_path / "c"
    with pytest.raises(DataError) as err:  # a.en.gz downloads; the server lacks a.de.gz
        fetch_files(["a.en.gz", "a.de.gz"], sums, **_fetch_args(tmp_path, url))
    assert f"cannot download {url.format(name='a.de.gz')} (HTTP Error 404" in str(err.value)
    assert "a.en.gz (" not in str(err.value)
    (root / "a.de.gz").write_bytes((tmp_path / "a.de.gz").read_bytes())
    (cache / "a.en.gz").write_bytes(b"damaged")
    monkeypatch.setattr(fetch, "_FAILED_DOWNLOADS", {})  # a later process: a.de.gz is tried again
    paths, source = fetch_files(
        ["a.en.gz", "a.de.gz"], sums, **_fetch_args(tmp_path, url, fallback=tmp_path / "nowhere")
    )
    assert source.startswith(f"download cache {cache}")  # not the mirror: the damaged copy was replaced
    assert sha256_file(paths["a.en.gz"]) == sums["a.en.gz"]


def test_a_checksum_in_upper_case_matches(tmp_path):
    path = tmp_path / "val.en.gz"
    digest = _gz(path, ["hello"])
    fetch.verify(path, digest.upper())  # as PowerShell's Get-FileHash prints it
    (tmp_path / "sums").write_text(f"{digest.upper()}  val.en.gz\n")
    assert read_checksums(tmp_path / "sums") == {"val.en.gz": digest}


@pytest.mark.reliability  # docs/reliability.md
def test_a_failed_download_is_not_tried_again_in_the_same_process(tmp_path, monkeypatch):
    # a pipeline prepares its data at every step: a hanging host must not cost its timeout at each one
    monkeypatch.delenv("STRUCTMT_MULTI30K", raising=False)
    tries = []

    def hanging(url, timeout):
        tries.append(url)
        raise TimeoutError("timed out")

    monkeypatch.setattr(fetch.urllib.request, "urlopen", hanging)
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    good = _gz(mirror / "a.en.gz", ["hello world"])
    args = _fetch_args(tmp_path, "https://example.invalid/{name}", fallback=mirror)
    for attempt in range(3):
        paths, source = fetch_files(["a.en.gz"], {"a.en.gz": good}, **args)
        assert paths["a.en.gz"] == mirror / "a.en.gz"
        assert source.startswith(f"offline mirror {mirror} (download failed: timed out")
        assert source.endswith("not tried again for 600 s))") == (attempt > 0)
    assert tries == ["https://example.invalid/a.en.gz"]
    # ten minutes on, it is tried again (a sweep's process can outlast a network blip)
    clock = fetch.time.monotonic() + fetch.RETRY_AFTER_S
    monkeypatch.setattr(fetch.time, "monotonic", lambda: clock)
    fetch_files(["a.en.gz"], {"a.en.gz": good}, **args)
    assert tries == ["https://example.invalid/a.en.gz"] * 2
    # another file (another URL) is still tried
    other = _gz(mirror / "b.en.gz", ["bye"])
    fetch_files(["b.en.gz"], {"b.en.gz": other}, **args)
    assert tries[-1] == "https://example.invalid/b.en.gz"


@pytest.mark.reliability
def test_download_verifies_checksum_and_leaves_nothing_on_mismatch(http_root, tmp_path, monkeypatch):
    monkeypatch.delenv("STRUCTMT_MULTI30K", raising=False)
    root, url = http_root
    good = _gz(root / "a.en.gz", ["hello world"])
    cache = tmp_path / "cache"
    paths, source = fetch_files(
        ["a.en.gz"],
        {"a.en.gz": good},
        url_template=url,
        mirror=None,
        env_var="STRUCTMT_MULTI30K",
        fallback=None,
        cache=cache,
    )
    assert paths["a.en.gz"].read_bytes() == (root / "a.en.gz").read_bytes() and "download" in source
    _gz(root / "b.en.gz", ["tampered"])
    with pytest.raises(DataError, match=r"checksum mismatch for .*expected sha256 0{64}"):
        fetch_files(
            ["b.en.gz"],
            {"b.en.gz": "0" * 64},
            url_template=url,
            mirror=None,
            env_var="STRUCTMT_MULTI30K",
            fallback=None,
            cache=cache,
        )
    assert sorted(p.name for p in cache.iterdir()) == ["a.en.gz"]  # no partial or unverified file


@pytest.mark.reliability
def test_missing_mirror_and_no_network_names_what_to_set(tmp_path, monkeypatch):
    monkeypatch.delenv("STRUCTMT_MULTI30K", raising=False)
    with pytest.raises(DataError, match=r"nowhere lacks x.gz\. Set \$STRUCTMT_MULTI30K .*or place them in"):
        fetch_files(
            ["x.gz"],
            {"x.gz": "0" * 64},
            url_template="http://127.0.0.1:9/{name}",
            mirror=None,
            env_var="STRUCTMT_MULTI30K",
            fallback=tmp_path / "nowhere",
            cache=tmp_path / "c",
        )
    monkeypatch.setenv("STRUCTMT_MULTI30K", str(tmp_path / "empty"))
    with pytest.raises(DataError, match=r"\$STRUCTMT_MULTI30K .*empty lacks x.gz"):
        fetch_files(
            ["x.gz"],
            {"x.gz": "0" * 64},
            url_template="http://127.0.0.1:9/{name}",
            mirror=None,
            env_var="STRUCTMT_MULTI30K",
            fallback=None,
            cache=tmp_path / "c",
        )


def test_a_copy_in_a_mirror_the_environment_or_the_offline_mirror_is_verified_before_use(tmp_path, monkeypatch):
    """Every folder fetch_files takes a file from (data.mirror, $STRUCTMT_MULTI30K, the offline mirror after a
    failed download) has its copy checked against the manifest's checksum: a damaged one is refused, never used."""
    monkeypatch.delenv("STRUCTMT_MULTI30K", raising=False)
    folder = tmp_path / "folder"
    folder.mkdir()
    good = _gz(folder / "a.en.gz", ["hello world"])
    (folder / "a.en.gz").write_bytes(b"damaged")
    with pytest.raises(DataError, match=rf"checksum mismatch for {folder / 'a.en.gz'}: expected sha256 {good}"):
        fetch_files(["a.en.gz"], {"a.en.gz": good}, **_fetch_args(tmp_path, mirror=str(folder)))
    monkeypatch.setenv("STRUCTMT_MULTI30K", str(folder))
    with pytest.raises(DataError, match=rf"checksum mismatch for {folder / 'a.en.gz'}: expected sha256 {good}"):
        fetch_files(["a.en.gz"], {"a.en.gz": good}, **_fetch_args(tmp_path))
    monkeypatch.delenv("STRUCTMT_MULTI30K")
    with pytest.raises(DataError, match=rf"checksum mismatch for {folder / 'a.en.gz'}: expected sha256 {good}"):
        fetch_files(["a.en.gz"], {"a.en.gz": good}, **_fetch_args(tmp_path, fallback=folder))


def test_a_configured_mirror_comes_before_the_environments_folder(tmp_path, monkeypatch):
    """data.mirror (--mirror) is what the user asked for in this run: it wins over $STRUCTMT_MULTI30K."""
    configured, environment = tmp_path / "configured", tmp_path / "environment"
    configured.mkdir()
    environment.mkdir()
    good = _gz(configured / "a.en.gz", ["hello world"])
    (environment / "a.en.gz").write_bytes((configured / "a.en.gz").read_bytes())
    monkeypatch.setenv("STRUCTMT_MULTI30K", str(environment))
    paths, source = fetch_files(["a.en.gz"], {"a.en.gz": good}, **_fetch_args(tmp_path, mirror=str(configured)))
    assert paths == {"a.en.gz": configured / "a.en.gz"} and source == f"configured mirror {configured}"
    paths, source = fetch_files(["a.en.gz"], {"a.en.gz": good}, **_fetch_args(tmp_path))
    assert paths == {"a.en.gz": environment / "a.en.gz"} and source == f"$STRUCTMT_MULTI30K {environment}"


def test_a_corrupt_download_falls_back_to_the_offline_mirror_and_the_damaged_cached_copy_is_not_kept(
    http_root, tmp_path, monkeypatch
):
    """The server sends other bytes than the manifest's: the offline mirror's verified copy is used, and neither
    the damaged copy found in the cache nor the corrupt download stays in the cache."""
    monkeypatch.delenv("STRUCTMT_MULTI30K", raising=False)
    root, url = http_root
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    good = _gz(mirror / "a.en.gz", ["hello world"])
    _gz(root / "a.en.gz", ["tampered"])
    cache = tmp_path / "c"
    cache.mkdir()
    (cache / "a.en.gz").write_bytes(b"damaged")
    paths, source = fetch_files(["a.en.gz"], {"a.en.gz": good}, **_fetch_args(tmp_path, url, fallback=mirror))
    assert paths == {"a.en.gz": mirror / "a.en.gz"}
    assert source.startswith(f"offline mirror {mirror} (download failed: checksum mismatch for a.en.gz downloaded ")
    assert list(cache.iterdir()) == []


def test_a_verified_copy_in_the_download_cache_is_used_without_downloading_it_again(http_root, tmp_path, monkeypatch):
    monkeypatch.delenv("STRUCTMT_MULTI30K", raising=False)
    root, url = http_root
    good = _gz(root / "a.en.gz", ["hello world"])
    data = (root / "a.en.gz").read_bytes()
    fetch_files(["a.en.gz"], {"a.en.gz": good}, **_fetch_args(tmp_path, url))
    (root / "a.en.gz").unlink()  # the server has it no more: a second download would fail
    paths, source = fetch_files(["a.en.gz"], {"a.en.gz": good}, **_fetch_args(tmp_path, url))
    assert source.startswith(f"download cache {tmp_path / 'c'} ") and paths["a.en.gz"].read_bytes() == data


class _Chunked(_Quiet):
    """Sends each file whole as one chunked transfer: no Content-Length header."""

    protocol_version = "HTTP/1.1"

    def do_GET(self):
        data = (Path(self.directory) / self.path.lstrip("/")).read_bytes()
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.write(b"%x\r\n" % len(data) + data + b"\r\n0\r\n\r\n")
        self.close_connection = True


@pytest.fixture
def chunked_whole_http_root(tmp_path):
    """Like :func:`http_root`, but every transfer is chunked (and whole)."""
    yield from _serve(tmp_path, _Chunked)


def test_a_whole_download_without_a_content_length_is_kept(chunked_whole_http_root, tmp_path, monkeypatch):
    """A server that announces no length (a chunked transfer) is no failed download."""
    monkeypatch.delenv("STRUCTMT_MULTI30K", raising=False)
    root, url = chunked_whole_http_root
    good = _gz(root / "a.en.gz", ["hello world"] * 20)
    paths, source = fetch_files(["a.en.gz"], {"a.en.gz": good}, **_fetch_args(tmp_path, url))
    assert source.startswith("download cache") and sha256_file(paths["a.en.gz"]) == good


def test_a_name_the_manifest_has_no_checksum_for_is_refused_before_anything_is_fetched(tmp_path, monkeypatch):
    monkeypatch.delenv("STRUCTMT_MULTI30K", raising=False)
    with pytest.raises(DataError, match=r"no checksum for \['b.en.gz'\] in the manifest; add them to data/\*.sha256"):
        fetch_files(["a.en.gz", "b.en.gz"], {"a.en.gz": "0" * 64}, **_fetch_args(tmp_path))
    assert not (tmp_path / "c").exists()


def test_checksum_lines_are_a_sha256_and_a_name_as_sha256sum_writes_them(tmp_path):
    """``sha256sum -b`` marks a name with ``*`` (binary mode): the name is the file's. A digest of another length
    or a third field (a name with a space, another format) is refused, naming the line."""
    digest = "ab" * 32
    sums = tmp_path / "sums"
    sums.write_text(f"{digest} *train.en.gz\n\n{digest.upper()}  val.en.gz\n")
    assert read_checksums(sums) == {"train.en.gz": digest, "val.en.gz": digest}
    for line in (f"{digest[:-1]}  val.en.gz", f"{digest}0  val.en.gz", f"{digest}  val en.gz", f"{digest}"):
        sums.write_text(f"{digest}  train.en.gz\n{line}\n")
        with pytest.raises(DataError, match=rf"sums:2: expected '<sha256>  <file name>', got '{line}'"):
            read_checksums(sums)


def test_bleu_equals_sacrebleu_cli(tmp_path):
    ref = tmp_path / "ref.de"
    hyp = tmp_path / "hyp.de"
    ref.write_text("Ein Mann fährt Fahrrad.\nZwei Hunde spielen im Schnee.\nEine Frau liest ein Buch im Park.\n")
    hyp.write_text("Ein Mann fährt ein Fahrrad.\nZwei Hunde spielen im Schnee.\nEine Frau liest im Park.\n")
    s = score(hyp, ref)
    cli = subprocess.run(
        [sys.executable, "-m", "sacrebleu", str(ref), "-i", str(hyp), "-b", "-w", "2"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert s.bleu == float(cli.stdout.strip())
    cli_chrf = subprocess.run(
        [sys.executable, "-m", "sacrebleu", str(ref), "-i", str(hyp), "-b", "-w", "2", "-m", "chrf"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert s.chrf == float(cli_chrf.stdout.strip())
    assert s.bleu_signature == "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0"


def _row(run: str, test: str = "test_2016_flickr", bleu: float = 30.0) -> dict:
    return {"run_id": run, "test_set": test, "bleu": bleu, "chrf": 55.0, "bleu_signature": "sig", "git_commit": "abc"}


def test_leaderboard_rows_are_never_duplicated(tmp_path):
    csv_path = tmp_path / "leaderboard.csv"
    assert leaderboard.add_rows(csv_path, [_row("a"), _row("a", "test_2017_flickr")]) == 2
    assert leaderboard.add_rows(csv_path, [_row("a"), _row("b")]) == 1
    rows = leaderboard.read_rows(csv_path)
    assert [(r["run_id"], r["test_set"]) for r in rows] == [
        ("a", "test_2016_flickr"),
        ("a", "test_2017_flickr"),
        ("b", "test_2016_flickr"),
    ]
    with pytest.raises(ValueError, match="unknown columns"):
        leaderboard.add_rows(csv_path, [_row("c") | {"bogus": 1}])
    md = leaderboard.render_markdown(rows)
    assert md.count("| a |") == 2 and "BLEU signature: `sig`" in md


def _append_many(csv_path: str, worker: int, start) -> None:
    start.wait(120)
    for i in range(15):
        leaderboard.add_rows(Path(csv_path), [_row(f"w{worker}-{i}"), _row("shared")])


def _fill_many(csv_path: str, worker: int, start) -> None:
    """A run's rows, then their p-values one by one, as a structured run's are filled once its dense partner is
    scored (in a sweep, while other points add theirs)."""
    rows = [_row(f"f{worker}-{i}") for i in range(15)]
    leaderboard.add_rows(Path(csv_path), rows)
    start.wait(120)
    for row in rows:
        fill_empty(Path(csv_path), [row | {"p_value_vs_dense": 0.5}], ["p_value_vs_dense"])


@pytest.mark.reliability
def test_concurrent_writers_lose_and_duplicate_nothing(tmp_path):
    csv_path = tmp_path / "leaderboard.csv"
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(4)  # the writes begin together, after each process's imports
    procs = [ctx.Process(target=_append_many, args=(str(csv_path), w, start)) for w in range(3)]
    procs.append(ctx.Process(target=_fill_many, args=(str(csv_path), 3, start)))
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    rows = leaderboard.read_rows(csv_path)
    keys = [(r["run_id"], r["test_set"]) for r in rows]
    assert len(keys) == len(set(keys)) == 4 * 15 + 1
    assert [r["p_value_vs_dense"] for r in rows if r["run_id"].startswith("f3-")] == ["0.5"] * 15


def _read_records(wandb_file: Path) -> list:
    """Decode the records of a local ``.wandb`` file (LevelDB-log framing of protobuf records)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = wandb_file.read_bytes()
    block, pos, records, pending = 32768, 7, [], b""  # 7-byte file header (":W&B", magic, version)
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # block trailer padding
            pos += left
            continue
        length = int.from_bytes(data[pos + 4 : pos + 6], "little")
        kind = data[pos + 6]
        payload = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            continue
        pending += payload
        if kind in (1, 4):  # FULL or LAST
            record = pb.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def read_offline_run(folder: Path) -> dict:
    """Config, history rows and summary of a local W&B run folder, read from its ``.wandb`` file."""
    import json

    files = list(folder.glob("run-*.wandb"))
    if not files:
        raise FileNotFoundError(f"no run-*.wandb file in {folder}")

    def key(item) -> str:
        return item.key or "/".join(item.nested_key)

    config: dict = {}
    summary: dict = {}
    history: list[dict] = []
    for record in _read_records(files[0]):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            config.update({i.key: json.loads(i.value_json) for i in record.run.config.update})
        elif kind == "config":
            config.update({i.key: json.loads(i.value_json) for i in record.config.update})
        elif kind == "history":
            history.append({key(i): json.loads(i.value_json) for i in record.history.item})
        elif kind == "summary":
            summary.update({key(i): json.loads(i.value_json) for i in record.summary.update})
    return {"config": config, "history": history, "summary": summary}


def test_wandb_offline_run_holds_config_curve_and_scores(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    log = tmp_path / "train.log"
    log.write_text(
        "2026-01-01 | INFO | train_inner | epoch 001:     50 / 136 loss=12.3, nll_loss=12.2, ppl=4756.5, wps=2322.1, "
        "num_updates=50, lr=0.00025\n"
        "2026-01-01 | INFO | train_inner | epoch 001:    100 / 136 loss=9.8, nll_loss=9.4, ppl=685.9, wps=1988.8, "
        "num_updates=100, lr=0.0005\n"
    )
    rows = [
        _row("run-x", bleu=31.25)
        | {"chrf": 57.5, "p_value_vs_dense": 0.04, "bleu_ci95": "", "machine": "AMD EPYC (AVX512)", "params": "2350080"}
    ]
    folder = log_experiment(
        "run-x",
        {"model": {"arch": "structured_transformer_multi30k", "window": 3}},
        log,
        rows,
        tmp_path / "wandb",
        WandbSettings(project="structmt-test"),
        valid={"bleu": 33.5, "chrf": 58.25},
    )
    assert folder is not None and folder.name.startswith("offline-run-") and folder.name.endswith("-run-x")
    run = read_offline_run(folder)
    assert run["config"]["model"] == {"arch": "structured_transformer_multi30k", "window": 3}
    assert [h["train/loss"] for h in run["history"]] == [12.3, 9.8]
    assert run["summary"]["test_2016_flickr/bleu"] == 31.25
    assert (run["summary"]["valid/bleu"], run["summary"]["valid/chrf"]) == (33.5, 58.25)  # a sweep's objective
    assert run["summary"]["test_2016_flickr/p_value_vs_dense"] == 0.04
    # the whole row, numbers as numbers, an empty cell left out: the provenance beside the scores
    assert run["summary"]["test_2016_flickr/machine"] == "AMD EPYC (AVX512)"
    assert run["summary"]["test_2016_flickr/git_commit"] == "abc"
    assert run["summary"]["test_2016_flickr/params"] == 2350080
    assert "test_2016_flickr/bleu_ci95" not in run["summary"]


def _logged_config(tmp_path, monkeypatch, trained, now=None, name=None, heads="auto"):
    """The W&B config ``_log_wandb`` records for a run trained as ``trained`` (its spec.json), logged by a command
    whose spec is ``now`` (default: the same), in the folder ``name`` (default: its run id), rows labelled
    ``heads``."""
    import json
    from dataclasses import asdict

    from structmt.paths import RunFolder
    from structmt.pipeline.evaluation import _log_wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    run = RunFolder(tmp_path / (name or trained.run_id()))
    run.path.mkdir()
    run.spec.write_text(json.dumps(asdict(trained)))
    _tiny_train_log(run.path)
    row = _row(run.path.name) | {"data": "multi30k_en_de", "heads": heads, "cross": "", "options": ""}
    folder = _log_wandb(now or trained, run, [row], tmp_path, WandbSettings("offline"), "id-1", lambda message: None)
    assert folder is not None
    return read_offline_run(Path(folder))["config"]


def test_a_wandb_run_logged_again_records_the_settings_it_was_trained_with(tmp_path, monkeypatch):
    """A run logged again by a later command (a sweep adds its validation score, a p-value filled in) recorded
    that command's train.threads beside the tokens/s measured with the training's: the settings outside the
    run id come from the run's spec.json."""
    from dataclasses import replace

    from structmt.pipeline.spec import RunSpec, Schedule

    trained = RunSpec(schedule=Schedule(threads=1, save_interval=50))
    now = replace(trained, schedule=replace(trained.schedule, threads=2, save_interval=7))
    assert now.run_id() == trained.run_id()
    schedule = _logged_config(tmp_path, monkeypatch, trained, now)["schedule"]
    assert (schedule["threads"], schedule["save_interval"]) == (1, 50)


def test_a_wandb_run_of_a_roles_file_names_its_heads_as_its_rows_do(tmp_path, monkeypatch):
    """Its settings say heads "auto", which the roles file's mix replaces: filtering W&B runs on heads=auto
    would take it for the default mix."""
    from structmt.pipeline.spec import ModelSpec, RunSpec

    spec = RunSpec(model=ModelSpec(arch="structured_transformer_multi30k", heads_from="results/roles.json"))
    name = "multi30k_en_de-cpu_demo-w3-r2-roles-0000abcd"
    model = _logged_config(tmp_path, monkeypatch, spec, name=name, heads="roles:1a2b3c4d")["model"]
    assert (model["heads"], model["heads_from"]) == ("roles:1a2b3c4d", "results/roles.json")


def test_a_wandb_run_records_its_model_as_its_run_id_names_it(tmp_path, monkeypatch):
    """Two spellings of one model (blocks in another order, an error eps without an error term, a cross slope
    with dense cross-attention) are one run id: their W&B configs are one setting too, or filtering on
    model.apply would split the seeds of one row."""
    from dataclasses import asdict

    from structmt.pipeline.spec import ModelSpec, RunSpec

    plain = ModelSpec(arch="structured_transformer_multi30k")
    spec = RunSpec(model=ModelSpec(arch=plain.arch, apply="decoder,encoder", error_eps=0.5, cross_slope=2.0))
    assert spec.run_id() == RunSpec(model=plain).run_id()
    model = _logged_config(tmp_path, monkeypatch, spec)["model"]
    names = ("apply", "error_eps", "cross_slope")
    assert {k: model[k] for k in names} == {k: asdict(plain)[k] for k in names}


def test_a_wandb_run_that_fails_after_it_began_is_closed_and_removed(tmp_path, monkeypatch):
    """A failure while logging (here: the training log is gone) leaves no open run and no half-logged folder."""
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    with pytest.warns(UserWarning, match="W&B logging of run-x skipped"):
        folder = log_experiment(
            "run-x", {}, tmp_path / "missing.log", [_row("run-x")], tmp_path / "wandb", WandbSettings("offline")
        )
    assert folder is None and wandb.run is None
    assert list((tmp_path / "wandb").rglob("offline-run-*")) == []


def _tiny_train_log(tmp_path):
    log = tmp_path / "train.log"
    log.write_text("x | INFO | train_inner | epoch 001: 50 / 136 loss=12.3, num_updates=50, lr=0.00025\n")
    return log


@pytest.mark.reliability  # docs/reliability.md
def test_wandb_mode_of_the_config_is_used_and_leaves_the_environment_alone(tmp_path, monkeypatch):
    import os

    monkeypatch.setenv("WANDB_MODE", "disabled")
    row = _row("run-m", bleu=30.0)
    folder = log_experiment("run-m", {}, _tiny_train_log(tmp_path), [row], tmp_path / "wandb", WandbSettings("offline"))
    assert folder is not None and folder.name.startswith("offline-run-")  # logger.mode=offline beats WANDB_MODE
    assert os.environ["WANDB_MODE"] == "disabled"  # and is not left behind for the next job of the process
    assert log_experiment("run-m", {}, _tiny_train_log(tmp_path), [row], tmp_path / "w2", WandbSettings()) is None


@pytest.mark.reliability  # docs/reliability.md
def test_wandb_online_failure_is_logged_offline(tmp_path, monkeypatch):
    from structmt.pipeline import tracking

    real_init = tracking._init
    modes = []

    def init(wandb_dir, mode, project, **kwargs):
        modes.append(mode)
        if mode == "online":
            raise TimeoutError("no network on this node")
        return real_init(wandb_dir, mode, project, **kwargs)

    monkeypatch.setattr(tracking, "_init", init)
    with pytest.warns(UserWarning, match="failed online .*no network.*logging it offline"):
        folder = log_experiment(
            "run-o",
            {},
            _tiny_train_log(tmp_path),
            [_row("run-o", bleu=30.0)],
            tmp_path / "wandb",
            WandbSettings("online"),
        )
    assert modes == ["online", "offline"]
    assert folder is not None and folder.name.startswith("offline-run-")
    assert read_offline_run(folder)["summary"]["test_2016_flickr/bleu"] == 30.0
    # a later run of the process (a sweep's next point) waits for no server again, and warns no more
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        later = log_experiment(
            "run-p",
            {},
            _tiny_train_log(tmp_path),
            [_row("run-p", bleu=31.0)],
            tmp_path / "wandb",
            WandbSettings("online"),
        )
    assert modes == ["online", "offline", "offline"]
    assert later is not None and read_offline_run(later)["summary"]["test_2016_flickr/bleu"] == 31.0


@pytest.mark.reliability  # docs/reliability.md
def test_a_rerun_is_a_wandb_run_of_its_own(tmp_path):
    from structmt.pipeline.evaluation import keep_hypotheses, wandb_run_id

    first, hyp = tmp_path / "kept" / "r1.test_2016_flickr.de", tmp_path / "hyp.de"
    hyp.write_text("a\n")
    assert keep_hypotheses(hyp, first) == first
    first_id = wandb_run_id("r1", [first])
    assert first_id.startswith("r1-") and first_id == wandb_run_id("r1", [hyp])  # the same output: the same run
    hyp.write_text("b\n")
    rerun = keep_hypotheses(hyp, first)
    assert rerun != first
    other = wandb_run_id("r1", [rerun])  # in this results folder, or evaluated first in another one
    assert other.startswith("r1-") and other != first_id and other == wandb_run_id("r1", [hyp])
    # an evaluation whose second test set's hypotheses differ is a W&B run of its own too
    assert wandb_run_id("r1", [first, rerun]) != wandb_run_id("r1", [first, first])
    folder = log_experiment(
        "r1",
        {},
        _tiny_train_log(tmp_path),
        [_row("r1", bleu=31.0)],
        tmp_path / "wandb",
        WandbSettings("offline"),
        wandb_id=other,
    )
    assert folder is not None and folder.name.endswith(f"-{other}")


def _archs(rows: list[dict]) -> list[dict]:
    """Sweep-report rows of the default model: the structured arch, or its dense baseline's."""
    return [
        r | {"arch": "structured_transformer_multi30k" if r["window"] != "" else "transformer_multi30k"} for r in rows
    ]


def test_sweep_report_tables_heatmaps_and_verdict(tmp_path):
    from structmt.pipeline.sweep_report import report

    rows = [_row("d", bleu=30.0) | {"data": "m", "schedule": "s", "window": "", "rare": "", "train_tokens_per_s": 100}]
    for w, r, b in [(1, 0, 28.5), (1, 2, 29.0), (3, 0, 30.5), (3, 2, 29.9)]:
        rows.append(
            _row(f"w{w}r{r}", bleu=b)
            | {
                "data": "m",
                "schedule": "s",
                "window": w,
                "rare": r,
                "heads": "auto",
                "train_tokens_per_s": 90 + w,
                "p_value_vs_dense": 0.2,
            }
        )
    rows.append(_row("other", bleu=99.0) | {"data": "m", "schedule": "other", "window": 1, "rare": 1, "heads": "auto"})
    roles = {"data": "m", "schedule": "s", "window": 3, "rare": 0, "heads": "roles:1a2b3c4d"}
    rows.append(_row("roles", bleu=77.0) | roles | {"git_commit": "0123456789ab+dirty"})  # another role mix: listed
    cross = {"data": "m", "schedule": "s", "window": 3, "rare": 0, "heads": "auto", "cross": "w4/slope0.97"}
    rows.append(_row("cross", bleu=88.0) | cross)  # structured cross-attention: likewise
    leaderboard.add_rows(tmp_path / "leaderboard.csv", _archs(rows))
    text = report(tmp_path, "m", "s", "test_2016_flickr", tmp_path / "sweeps")
    assert (
        "Highest test BLEU of the heatmaps (role mix auto, dense cross-attention): "
        "w=3, r=0: BLEU 30.50, at or above the dense baseline's 30.00"
    ) in text
    assert text.count("| structured |") == 6 and "99.0" not in text
    assert "| structured | 3 | 0 | roles:1a2b3c4d |  |  | 77.00 |" in text and "| roles | 01234567+dirty |" in text
    assert "| structured | 3 | 0 | auto | w4/slope0.97 |  | 88.00 |" in text
    assert (tmp_path / "sweeps" / "sweep_m_s_test_2016_flickr_bleu.png").stat().st_size > 0
    assert (tmp_path / "sweeps" / "sweep_m_s_test_2016_flickr_cost.png").stat().st_size > 0
    assert "Missing" not in text  # the four points of w ∈ {1, 3} × r ∈ {0, 2}
    assert "Missing" not in report(tmp_path, "m", "s", "test_2016_flickr", tmp_path / "sweeps", grid_of="wr_small")
    # the best of several points on the test set that scores it: said, and where to choose instead
    assert (
        "That point is the highest of 4 on the test set that scores it: its BLEU and p-value are not corrected" in text
    )
    board = leaderboard.read_rows(tmp_path / "leaderboard.csv")
    (tmp_path / "leaderboard.csv").unlink()
    leaderboard.add_rows(tmp_path / "leaderboard.csv", [r for r in board if r["run_id"] != "d"])
    alone = report(tmp_path, "m", "s", "test_2016_flickr", tmp_path / "sweeps")
    assert alone.endswith("No verdict: the leaderboard has no dense run of m, schedule s, test_2016_flickr to compare "
                          "with (`structmt-run` trains it with `baseline=true`, the default).\n")  # fmt: skip
    # a sweep decoded with another length penalty (and beam): compared with the dense run decoded as it was
    decoded = {"data": "m", "schedule": "s", "options": "beam=2 lenpen=0.6", "train_tokens_per_s": 100}
    leaderboard.add_rows(tmp_path / "leaderboard.csv", _archs([
        _row("d", bleu=30.0) | decoded | {"options": "", "window": "", "rare": ""},  # decoded as the schedule
        _row("d-lp", bleu=20.0) | decoded | {"window": "", "rare": ""},
        _row("w3r2-lp", bleu=21.0) | decoded | {"window": 3, "rare": 2, "heads": "auto"},
    ]))  # fmt: skip
    penalised = report(tmp_path, "m", "s", "test_2016_flickr", tmp_path / "sweeps", options="beam=2 lenpen=0.6")
    assert "w=3, r=2: BLEU 21.00, at or above the dense baseline's 20.00" in penalised


def test_sweep_report_of_another_role_mix_names_it_and_has_a_page_of_its_own(tmp_path):
    """``--heads syn:1``: the verdict, the command line and the file names are that mix's, so its page does not
    overwrite the ``auto`` one; a point at exactly the dense BLEU is "at or above" it."""
    from structmt.pipeline.sweep_report import main, report

    base = {"data": "m", "schedule": "s", "train_tokens_per_s": 1}
    rows = [_row("d", bleu=30.0) | base | {"window": "", "rare": ""}]
    rows.append(_row("auto", bleu=31.0) | base | {"window": 3, "rare": 2, "heads": "auto"})
    rows.append(_row("syn", bleu=30.0) | base | {"window": 3, "rare": 2, "heads": "syn:1"})
    leaderboard.add_rows(tmp_path / "leaderboard.csv", _archs(rows))
    auto = report(tmp_path, "m", "s", "test_2016_flickr", tmp_path / "sweeps")
    main(["--results-dir", str(tmp_path), "--data", "m", "--schedule", "s", "--heads", "syn:1"])
    (page,) = (tmp_path / "sweeps").glob("sweep_m_s_test_2016_flickr_heads-syn-1-*.md")
    syn = page.read_text()
    assert (
        "Highest test BLEU of the heatmaps (role mix syn:1, dense cross-attention): w=3, r=2: BLEU 30.00, at or "
        "above the dense baseline's 30.00 (paired bootstrap p = n/a)."
    ) in syn
    assert "No point of the heatmaps reached" not in syn
    assert (
        "structmt-sweep-report --data m --schedule s --test-set test_2016_flickr --heads syn:1 "
        f"--results-dir {tmp_path}`" in syn
    )
    assert f"![BLEU]({page.stem}_bleu.png)" in syn and (page.parent / f"{page.stem}_bleu.png").is_file()
    assert (tmp_path / "sweeps" / "sweep_m_s_test_2016_flickr.md").read_text() == auto  # not overwritten
    spelt = report(tmp_path, "m", "s", "test_2016_flickr", tmp_path / "sweeps", heads="syntactic:1")
    assert spelt == syn  # the mix in another spelling: the rows' one (they found none)
    assert "(role mix auto, dense cross-attention): w=3, r=2: BLEU 31.00, at or above" in auto
    # every layer syn:1,rare:1 and layer by layer syn:1;rare:1 are two mixes: two pages
    for mix in ("syn:1,rare:1", "syn:1;rare:1"):
        leaderboard.add_rows(
            tmp_path / "leaderboard.csv", _archs([_row(mix, bleu=29.0) | base | {"window": 3, "rare": 2, "heads": mix}])
        )
        report(tmp_path, "m", "s", "test_2016_flickr", tmp_path / "sweeps", heads=mix)
    assert len(list((tmp_path / "sweeps").glob("*_heads-syn-1-rare-1-*.md"))) == 2


def test_sweep_report_file_names_of_a_test_set_slice_are_portable_and_distinct(tmp_path):
    """A row of ``data.max_eval_lines=100`` has test set ``test_2016_flickr[:100]``: its page's file name holds
    no character Windows refuses (``[ : ]``), and differs from the whole test set's page and another slice's."""
    from structmt.pipeline.sweep_report import report

    base = {"data": "m", "schedule": "s", "train_tokens_per_s": 1}
    for test in ("test_2016_flickr", "test_2016_flickr[:100]", "test_2016_flickr[:10]"):
        rows = [_row("d", bleu=30.0) | base | {"window": "", "rare": "", "test_set": test}]
        rows.append(_row("w3", bleu=31.0) | base | {"window": 3, "rare": 2, "heads": "auto", "test_set": test})
        leaderboard.add_rows(tmp_path / "leaderboard.csv", _archs(rows))
        text = report(tmp_path, "m", "s", test, tmp_path / "sweeps")
    assert f"--test-set 'test_2016_flickr[:10]' --results-dir {tmp_path}`" in text  # a glob pattern to a shell: quoted
    names = sorted(p.name for p in (tmp_path / "sweeps").iterdir())
    assert len(names) == 9 and not [n for n in names if set(n) & set('[]:<>"/\\|?*')]
    assert "sweep_m_s_test_2016_flickr.md" in names
    assert sum(n.startswith("sweep_m_s_test-2016-flickr-100-") for n in names) == 3


def test_sweep_report_names_the_points_of_the_grid_without_a_run(tmp_path):
    """A failed or unfinished sweep member drops out of the leaderboard: the report says so instead of giving a
    verdict over the points that happen to be there."""
    from structmt.pipeline.sweep_report import report

    rows = [_row("d", bleu=30.0) | {"data": "m", "schedule": "s", "window": "", "rare": "", "train_tokens_per_s": 1}]
    for w, r in [(1, 0), (1, 2), (3, 2)]:  # wr_small without (3, 0)
        rows.append(
            _row(f"w{w}r{r}", bleu=29.0)
            | {"data": "m", "schedule": "s", "window": w, "rare": r, "heads": "auto", "train_tokens_per_s": 1}
        )
    leaderboard.add_rows(tmp_path / "leaderboard.csv", rows)
    text = report(tmp_path, "m", "s", "test_2016_flickr", tmp_path / "sweeps")
    assert (
        "**Missing: 1 of the 4 points of the grid have no evaluated run** (failed, unfinished or not run): w=3 r=0."
        in text
    )
    assert text.index("Missing") < text.index("No point of the heatmaps reached the dense baseline")
    rows = rows[:2]  # only w=1 left: the found grid is w ∈ {1}; the sweep's own grid names every missing point
    (tmp_path / "leaderboard.csv").unlink()
    leaderboard.add_rows(tmp_path / "leaderboard.csv", rows)
    assert "Missing" not in report(tmp_path, "m", "s", "test_2016_flickr", tmp_path / "sweeps")
    text = report(tmp_path, "m", "s", "test_2016_flickr", tmp_path / "sweeps", grid_of="wr_small")
    assert "Missing: 3 of the 4 points" in text and "w=1 r=2, w=3 r=0, w=3 r=2." in text
    assert "--sweep wr_small" in text
    with pytest.raises(SystemExit, match="optuna_wr.yaml is not a grid"):
        report(tmp_path, "m", "s", "test_2016_flickr", tmp_path / "sweeps", grid_of="optuna_wr")
    with pytest.raises(SystemExit, match="--sweep nope: no .*nope.yaml; sweeps: optuna_wr, wr_grid, wr_small"):
        report(tmp_path, "m", "s", "test_2016_flickr", tmp_path / "sweeps", grid_of="nope")


def test_sweep_report_of_a_sweep_draws_and_judges_only_its_own_grid(tmp_path):
    """A run of the same schedule at a (w, r) outside the sweep's grid (a single run, another sweep) is listed as
    such, never drawn on its heatmaps nor named their best point."""
    from structmt.pipeline.sweep_report import report

    rows = [_row("d", bleu=30.0) | {"data": "m", "schedule": "s", "window": "", "rare": "", "train_tokens_per_s": 1}]
    for w, r, bleu in [(1, 0, 28.0), (1, 2, 29.0), (3, 0, 28.5), (3, 2, 29.5), (8, 4, 31.0)]:
        rows.append(
            _row(f"w{w}r{r}", bleu=bleu)
            | {"data": "m", "schedule": "s", "window": w, "rare": r, "heads": "auto", "train_tokens_per_s": 1}
        )
    leaderboard.add_rows(tmp_path / "leaderboard.csv", rows)
    text = report(tmp_path, "m", "s", "test_2016_flickr", tmp_path / "sweeps", grid_of="wr_small")
    assert (
        "Highest test BLEU of the heatmaps (role mix auto, dense cross-attention): w=3, r=2: BLEU 29.50, below" in text
    )
    assert "| structured (outside the grid) | 8 | 4 |" in text and "Missing" not in text
    # without --sweep, the grid is every (w, r) found: the w=8 run is a point of it
    assert "w=8, r=4: BLEU 31.00, at or above" in report(tmp_path, "m", "s", "test_2016_flickr", tmp_path / "sweeps")
    (tmp_path / "leaderboard.csv").unlink()
    leaderboard.add_rows(tmp_path / "leaderboard.csv", [rows[0], rows[-1]])
    with pytest.raises(SystemExit, match=r"no run of .* lies on the grid of --sweep wr_small .*; runs at w=8 r=4 lie"):
        report(tmp_path, "m", "s", "test_2016_flickr", tmp_path / "sweeps", grid_of="wr_small")


def test_sweep_report_heatmaps_put_each_points_scores_in_its_own_cell_and_order_windows_as_numbers(
    tmp_path, monkeypatch
):
    """Row r, column w of each heatmap is the (w, r) run's BLEU or tokens/s, its axes in numeric order; the table
    lists the points in that order too (w=10 after w=3, where text would sort it first)."""
    from structmt.pipeline import sweep_report

    drawn = {}
    monkeypatch.setattr(
        sweep_report, "annotated_heatmap", lambda grid, xs, ys, *, label, **kw: drawn.setdefault(label, (grid, xs, ys))
    )
    base = {"data": "m", "schedule": "s"}
    rows = [_row("d", bleu=30.0) | base | {"window": "", "rare": "", "train_tokens_per_s": 1}]
    for w, r, bleu, speed in [(10, 2, 34.0, 103), (3, 0, 31.0, 100), (10, 0, 33.0, 102), (3, 2, 32.0, 101)]:
        cell = {"window": w, "rare": r, "heads": "auto", "train_tokens_per_s": speed}
        rows.append(_row(f"w{w}r{r}", bleu=bleu) | base | cell)
    leaderboard.add_rows(tmp_path / "leaderboard.csv", _archs(rows))
    text = sweep_report.report(tmp_path, "m", "s", "test_2016_flickr", tmp_path / "sweeps")
    assert drawn["BLEU"] == ([[31.0, 33.0], [32.0, 34.0]], [3, 10], [0, 2])
    assert drawn["tokens/s"] == ([[100.0, 102.0], [101.0, 103.0]], [3, 10], [0, 2])
    points = [line.split(" | ")[1:3] for line in text.splitlines() if line.startswith("| structured |")]
    assert points == [["3", "0"], ["3", "2"], ["10", "0"], ["10", "2"]]


def test_a_heatmap_writes_each_cells_value_in_its_cell_and_leaves_a_point_not_run_empty(tmp_path, monkeypatch):
    """Row i, column j shows grid[i][j] in the format given, the first row at the bottom; a NaN cell stays empty."""
    from structmt import figures

    saved = []
    monkeypatch.setattr(figures, "save", lambda fig, png: saved.append((fig, png)))
    grid = [[1.0, float("nan")], [2.25, 3.5]]
    figures.annotated_heatmap(
        grid, [3, 10], [0, 2], xlabel="w", ylabel="r", label="BLEU", title="t", png=tmp_path / "h.png", fmt="{:.2f}"
    )
    ((fig, png),) = saved
    ax = fig.axes[0]
    cells = sorted((tuple(t.get_position()), t.get_text()) for t in ax.texts)
    assert cells == [((0, 0), "1.00"), ((0, 1), "2.25"), ((1, 1), "3.50")] and png == tmp_path / "h.png"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["3", "10"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["0", "2"]
    assert ax.get_ylim()[0] < ax.get_ylim()[1]  # r grows upwards
    figures.pyplot().close(fig)
    monkeypatch.undo()  # drawn for real: written, and closed (a report draws many)
    open_before = figures.pyplot().get_fignums()
    figures.annotated_heatmap(grid, [3, 10], [0, 2], xlabel="w", ylabel="r", label="BLEU", title="t", png=png)
    assert png.read_bytes()[:4] == b"\x89PNG" and figures.pyplot().get_fignums() == open_before


def test_a_sweeps_grid_is_its_distinct_windows_and_rare_counts_in_numeric_order(tmp_path, monkeypatch):
    """A sweep file listing a value twice or out of order has the grid of its distinct values: the points it
    misses are counted and named once each, in order."""
    from structmt.pipeline import sweep_report

    (tmp_path / "conf" / "sweep").mkdir(parents=True)
    params = "hydra:\n  sweeper:\n    params:\n      model.window: 10,3,10\n      model.rare: 2,0\n"
    (tmp_path / "conf" / "sweep" / "mine.yaml").write_text(params)
    monkeypatch.setattr(sweep_report, "REPO_ROOT", tmp_path)
    assert sweep_report.sweep_grid("mine") == ([3, 10], [0, 2])
    base = {"data": "m", "schedule": "s", "train_tokens_per_s": 1}
    rows = [_row("d", bleu=30.0) | base | {"window": "", "rare": ""}]
    rows.append(_row("w3r0", bleu=29.0) | base | {"window": 3, "rare": 0, "heads": "auto"})
    leaderboard.add_rows(tmp_path / "leaderboard.csv", _archs(rows))
    text = sweep_report.report(tmp_path, "m", "s", "test_2016_flickr", tmp_path / "sweeps", grid_of="mine")
    assert (
        "**Missing: 3 of the 4 points of the grid have no evaluated run** (failed, unfinished or not run): "
        "w=3 r=2, w=10 r=0, w=10 r=2." in text
    )


def test_a_sweep_of_a_structure_option_is_compared_with_the_dense_run_decoded_as_it_was(tmp_path):
    """``--options 'pos_window=2 beam=4'``: a dense run has no structure options, so the dense baseline is the one
    decoded with ``beam=4``; with ``pos_window=2`` alone, the dense run decoded as its schedule."""
    from structmt.pipeline.sweep_report import report

    base = {"data": "m", "schedule": "s", "train_tokens_per_s": 1}
    point = {"window": 3, "rare": 2, "heads": "auto"}
    rows = [
        _row("d", bleu=30.0) | base | {"window": "", "rare": ""},
        _row("d-b4", bleu=20.0) | base | {"window": "", "rare": "", "options": "beam=4"},
        _row("w3", bleu=25.0) | base | point | {"options": "pos_window=2"},
        _row("w3-b4", bleu=21.0) | base | point | {"options": "pos_window=2 beam=4"},
    ]
    leaderboard.add_rows(tmp_path / "leaderboard.csv", _archs(rows))
    text = report(tmp_path, "m", "s", "test_2016_flickr", tmp_path / "sweeps", options="pos_window=2")
    assert "w=3, r=2: BLEU 25.00, below the dense baseline's 30.00" in text
    text = report(tmp_path, "m", "s", "test_2016_flickr", tmp_path / "sweeps", options="pos_window=2 beam=4")
    assert "w=3, r=2: BLEU 21.00, at or above the dense baseline's 20.00" in text


def test_sweep_report_gives_no_verdict_when_the_dense_run_was_scored_with_another_bleu_signature(tmp_path):
    """The points share a signature, the dense run has another: its BLEU does not compare with theirs."""
    from structmt.pipeline.sweep_report import report

    base = {"data": "m", "schedule": "s", "train_tokens_per_s": 1}
    rows = [_row("d", bleu=20.0) | base | {"window": "", "rare": "", "bleu_signature": "other"}]
    rows += [_row(f"w{w}", bleu=25.0) | base | {"window": w, "rare": 0, "heads": "auto"} for w in (1, 3)]
    leaderboard.add_rows(tmp_path / "leaderboard.csv", _archs(rows))
    text = report(tmp_path, "m", "s", "test_2016_flickr", tmp_path / "sweeps")
    assert "No verdict: the runs it would compare (the dense baseline, the points of the heatmaps)" in text
    assert "Highest" not in text and "at or above" not in text


def test_sweep_report_verdict_gives_the_p_value_and_warns_of_the_choice_from_two_points_on(tmp_path):
    """The verdict reads ``p = 0.0432``; the caveat that the best point was chosen on the test set comes with two
    points and not with one. The page's command names the seed it was made for."""
    from structmt.pipeline.sweep_report import report

    base = {"data": "m", "schedule": "s", "train_tokens_per_s": 1, "seed": 1}
    rows = [_row("d", bleu=30.0) | base | {"window": "", "rare": ""}]
    for w, bleu, p in [(1, 29.0, 0.2), (3, 31.0, 0.0432)]:
        rows.append(_row(f"w{w}", bleu=bleu) | base | {"window": w, "rare": 0, "heads": "auto", "p_value_vs_dense": p})
    leaderboard.add_rows(tmp_path / "leaderboard.csv", _archs(rows))
    text = report(tmp_path, "m", "s", "test_2016_flickr", tmp_path / "sweeps", seed="1")
    assert (
        "w=3, r=0: BLEU 31.00, at or above the dense baseline's 30.00 (paired bootstrap p = 0.0432).\n"
        "That point is the highest of 2 on the test set that scores it" in text
    )
    assert f"--test-set test_2016_flickr --seed 1 --results-dir {tmp_path}`" in text
    (tmp_path / "leaderboard.csv").unlink()
    leaderboard.add_rows(tmp_path / "leaderboard.csv", _archs(rows[:2]))
    text = report(tmp_path, "m", "s", "test_2016_flickr", tmp_path / "sweeps", seed="1")
    assert "w=1, r=0: BLEU 29.00, below the dense baseline's 30.00 (paired bootstrap p = 0.2)." in text
    assert "That point is the highest" not in text


def test_the_training_curve_is_the_last_trainings_where_the_log_goes_back(tmp_path):
    """train.log is appended to: a run resumed from an earlier checkpoint (or trained again under its id) logs
    updates it had logged before; the curve keeps the later process's records from there on."""
    from structmt.fairseq_cli import training_curve

    def line(updates, loss, wall):
        return f"x | INFO | train_inner | epoch 001: 5 / 9 loss={loss}, num_updates={updates}, lr=0.1, wall={wall}\n"

    log = tmp_path / "train.log"
    first = [(50, 9, 10), (100, 8, 20), (150, 7, 30), (200, 6, 40)]  # killed after the checkpoint at 100
    log.write_text("".join(line(*r) for r in first + [(150, 7.5, 12), (200, 6.5, 22), (250, 5, 32)]))
    # fairseq's wall clock starts again with each process: the curve's continues from the record kept before
    assert [(r["num_updates"], r["loss"], r["wall"]) for r in training_curve(log)] == [
        (50, 9, 10),
        (100, 8, 20),
        (150, 7.5, 32),
        (200, 6.5, 42),
        (250, 5, 52),
    ]


def test_the_training_curve_is_the_logged_updates_not_the_epoch_summaries(tmp_path):
    """An epoch's summary (``| train | epoch 001 | …``) is no point of the curve: it would replace the record of
    the same update with the epoch's mean loss."""
    from structmt.fairseq_cli import training_curve

    log = tmp_path / "train.log"
    log.write_text(
        "x | INFO | train_inner | epoch 001:  50 / 100 loss=9, num_updates=50, lr=0.1, wall=10\n"
        "x | INFO | train_inner | epoch 001:  100 / 100 loss=8, num_updates=100, lr=0.1, wall=20\n"
        "x | INFO | train | epoch 001 | loss 8.5 | num_updates 100 | lr 0.1 | wall 21\n"
    )
    assert [(r["num_updates"], r["loss"], r["wall"]) for r in training_curve(log)] == [(50, 9, 10), (100, 8, 20)]


def test_a_wandb_mode_in_the_environment_that_wandb_does_not_know_is_named_and_never_blocks_a_chosen_mode(
    tmp_path, monkeypatch
):
    import os

    monkeypatch.setenv("WANDB_MODE", "ofline")
    row = _row("run-e", bleu=30.0)
    with pytest.warns(UserWarning, match=r"skipped: WANDB_MODE='ofline' is not a W&B mode \(online, offline"):
        assert log_experiment("run-e", {}, _tiny_train_log(tmp_path), [row], tmp_path / "w", WandbSettings()) is None
    folder = log_experiment("run-e", {}, _tiny_train_log(tmp_path), [row], tmp_path / "w", WandbSettings("offline"))
    assert folder is not None and read_offline_run(folder)["summary"]["test_2016_flickr/bleu"] == 30.0
    assert os.environ["WANDB_MODE"] == "ofline"  # left as the user set it


@pytest.mark.parametrize(
    ("env", "want"),
    [
        ({"WANDB_DISABLED": "true"}, "disabled"),
        ({"WANDB_DISABLED": "1", "WANDB_API_KEY": "k" * 40}, "disabled"),
        ({"WANDB_DISABLED": "false", "WANDB_API_KEY": "k" * 40}, "online"),
        ({"WANDB_DISABLED": "True", "WANDB_MODE": "disabled"}, "disabled"),
        ({"WANDB_DISABLED": "TRUE"}, "disabled"),
        ({"WANDB_DISABLED": " yes\n"}, "disabled"),
        ({}, "offline"),
        ({"WANDB_MODE": "online"}, "online"),
    ],
)
def test_wandb_mode_honours_wandb_disabled(monkeypatch, env, want):
    """``WANDB_DISABLED=true``, the common way to turn W&B off, was ignored: with an API key runs went online."""
    from structmt.pipeline.tracking import wandb_mode

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert wandb_mode() == want
    assert wandb_mode("offline") == "offline"  # a mode the config chooses is kept


def test_wandb_disabled_beside_another_wandb_mode_is_refused_naming_both(monkeypatch):
    from structmt.pipeline.tracking import wandb_mode

    monkeypatch.setenv("WANDB_DISABLED", "yes")
    monkeypatch.setenv("WANDB_MODE", "online")
    with pytest.raises(ValueError, match=r"WANDB_DISABLED='yes' and WANDB_MODE='online' disagree"):
        wandb_mode()


def test_a_wandb_login_key_in_netrc_makes_auto_online(tmp_path, monkeypatch):
    """``wandb login`` stores the key in the netrc file, not the environment: auto mode logged such users offline."""
    from structmt.pipeline.tracking import wandb_mode

    netrc = tmp_path / "netrc"
    netrc.write_text("machine example.org login u password p\n")
    monkeypatch.setenv("NETRC", str(netrc))
    assert wandb_mode() == "offline"  # another host's entry is no W&B key
    netrc.write_text("machine example.org login u password p\nmachine api.wandb.ai login user password " + "k" * 40)
    assert wandb_mode() == "online"
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.com")
    assert wandb_mode() == "offline"  # a W&B server of one's own: its entry counts, not api.wandb.ai's
    netrc.write_text("machine wandb.example.com login user password " + "k" * 40)
    assert wandb_mode() == "online"
    netrc.write_text("machine wandb.example.com login user password")  # unreadable: wandb cannot use it either
    assert wandb_mode() == "offline"


def test_a_failed_wandb_init_is_torn_down_so_the_offline_retry_can_take_the_run_id(tmp_path, monkeypatch):
    import wandb

    from structmt.pipeline import tracking

    torn = []
    monkeypatch.setattr(wandb, "init", lambda **kwargs: (_ for _ in ()).throw(TimeoutError("no network")))
    monkeypatch.setattr(wandb, "teardown", lambda: torn.append(True))
    with pytest.raises(TimeoutError):
        tracking._init(tmp_path, "online", "structmt", id="run-t")
    assert torn == [True]


def test_a_netrc_file_wandb_cannot_parse_is_no_key(tmp_path, monkeypatch):
    """wandb cannot read a key from it either: auto mode logs offline, not online to a server refusing it."""
    from structmt.pipeline.tracking import wandb_mode

    netrc = tmp_path / "netrc"
    netrc.write_text("machine api.wandb.ai login user password " + "k" * 40 + "\nmachine\n")
    monkeypatch.setenv("NETRC", str(netrc))
    assert wandb_mode() == "offline"


def test_a_wandb_mode_or_project_wandb_would_refuse_is_named(monkeypatch):
    """A mode other than auto, offline, online and disabled is a ValueError naming the choices; a project name is
    1 to 128 characters, none of W&B's forbidden ones."""
    from structmt.pipeline.tracking import project_problem, wandb_mode

    monkeypatch.setenv("WANDB_MODE", "offline")
    with pytest.raises(ValueError, match=r"^W&B mode 'Offline': choose from auto, offline, online, disabled$"):
        wandb_mode("Offline")
    assert [project_problem(p) for p in ("p", "p" * 128, "team-proj_2.b")] == ["", "", ""]
    refused = ["", "p" * 129, *(f"a{c}b" for c in "/\\#?%:")]
    assert all(project_problem(p).startswith("must be 1 to 128 characters") for p in refused)


def test_the_training_curve_is_logged_at_its_updates_and_the_rows_columns_under_their_test_set(tmp_path):
    """Each point of the curve is the W&B step of its update count (a resumed run's points fall where they
    belong), the count itself not a curve; a row's columns are its test set's, without the run id and test set
    that name them."""
    log = tmp_path / "train.log"
    log.write_text(
        "x | INFO | train_inner | epoch 001:     50 / 136 loss=12.3, num_updates=50, lr=0.00025\n"
        "x | INFO | train_inner | epoch 001:    100 / 136 loss=9.8, num_updates=100, lr=0.0005\n"
    )
    folder = log_experiment("run-s", {}, log, [_row("run-s")], tmp_path / "wandb", WandbSettings("offline"))
    assert folder is not None
    run = read_offline_run(folder)
    assert [{k: v for k, v in h.items() if k.startswith(("train/", "_step"))} for h in run["history"]] == [
        {"train/loss": 12.3, "train/lr": 0.00025, "_step": 50},
        {"train/loss": 9.8, "train/lr": 0.0005, "_step": 100},
    ]
    assert {k: v for k, v in run["summary"].items() if k.startswith("test_")} == {
        "test_2016_flickr/bleu": 30.0,
        "test_2016_flickr/chrf": 55.0,
        "test_2016_flickr/bleu_signature": "sig",
        "test_2016_flickr/git_commit": "abc",
    }


def test_a_wandb_run_that_fails_as_it_is_logged_is_closed_as_failed_and_an_offline_failure_is_not_tried_again(
    tmp_path, monkeypatch
):
    """The run is finished with exit code 1 (online, W&B shows it failed, not finished); a failure offline is
    said once and leaves later online runs of the process online (only an online failure sends them offline)."""
    import wandb

    from structmt.pipeline import tracking

    finished: list[dict] = []
    modes: list[str] = []

    class Run:
        dir = str(tmp_path / "wandb" / "offline-run-x" / "files")

        def finish(self, **kwargs):
            finished.append(kwargs)

    def init(wandb_dir, mode, project, **kwargs):
        modes.append(mode)
        if len(modes) > 1:
            raise OSError("disk full")
        return Run()

    monkeypatch.setattr(tracking, "_init", init)
    monkeypatch.setattr(wandb, "teardown", lambda: None)
    missing = tmp_path / "missing.log"
    with pytest.warns(UserWarning, match="W&B logging of run-x skipped"):
        assert log_experiment("run-x", {}, missing, [], tmp_path / "wandb", WandbSettings("offline")) is None
    assert finished == [{"exit_code": 1}] and modes == ["offline"]
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        assert log_experiment("run-y", {}, missing, [], tmp_path / "wandb", WandbSettings("offline")) is None
    assert modes == ["offline", "offline"] and [str(w.message) for w in said] == [
        "W&B logging of run-y skipped: disk full"
    ]
    with pytest.warns(UserWarning, match="failed online"):
        log_experiment("run-z", {}, missing, [], tmp_path / "wandb", WandbSettings("online"))
    assert modes == ["offline", "offline", "online", "offline"]


def test_wandb_init_sees_the_mode_in_the_environment_and_none_is_left_behind(tmp_path, monkeypatch):
    """W&B reads ``WANDB_MODE`` as it starts a run; where the user set none, none is left for the next job."""
    import os

    import wandb

    from structmt.pipeline import tracking

    seen: list[str | None] = []
    monkeypatch.setattr(wandb, "setup", lambda settings: None)
    monkeypatch.setattr(wandb, "init", lambda **kwargs: seen.append(os.environ.get("WANDB_MODE")) or "a run")
    assert tracking._init(tmp_path, "offline", "structmt", id="run-e") == "a run"
    assert seen == ["offline"] and "WANDB_MODE" not in os.environ


def test_a_leaderboard_cell_is_logged_as_the_kind_of_number_its_column_holds():
    """Counts as integers (a seed 1, not 1.0), scores as floats, an empty number as None, text as it is."""
    from structmt.pipeline.tracking import _cell

    cells = {c: _cell(c, v) for c, v in [("seed", "1"), ("params", "2350080"), ("bleu", "38.91"), ("bleu_ci95", "")]}
    assert cells == {"seed": 1, "params": 2350080, "bleu": 38.91, "bleu_ci95": None}
    assert [type(cells[c]) for c in ("seed", "params", "bleu")] == [int, int, float]
    assert _cell("machine", "M") == "M" and _cell("seed", 3) == 3


def test_the_wandb_leaderboard_table_holds_numbers_and_a_failure_is_an_error(tmp_path, monkeypatch, capsys):
    from structmt.pipeline import tracking

    tables = []
    monkeypatch.setattr("wandb.Table", lambda columns, data: tables.append((columns, data)) or object())
    rows = [_row("a", bleu=38.91) | {"seed": 1, "p_value_vs_dense": ""}, _row("b", bleu=9.62) | {"seed": 2}]
    leaderboard.add_rows(tmp_path / "leaderboard.csv", rows)
    monkeypatch.setattr(tracking, "_init", lambda *a, **k: type("R", (), {"log": lambda self, x: None})())
    monkeypatch.setattr(tracking, "_finish", lambda run: tmp_path / "offline-run-x")
    leaderboard.main(["--results-dir", str(tmp_path), "--wandb", "--wandb-dir", str(tmp_path / "w")])
    ((columns, data),) = tables
    cells = [dict(zip(columns, row, strict=True)) for row in data]
    assert [(c["bleu"], c["seed"], c["p_value_vs_dense"]) for c in cells] == [(38.91, 1, None), (9.62, 2, None)]
    assert max(c["bleu"] for c in cells) == 38.91  # sorted by value, not as text
    monkeypatch.setenv("WANDB_MODE", "disabled")
    with pytest.raises(SystemExit, match="the W&B leaderboard table was not logged"):
        leaderboard.main(["--results-dir", str(tmp_path), "--wandb", "--wandb-dir", str(tmp_path / "w")])
    with pytest.raises(SystemExit):
        leaderboard.main(["--results-dir", str(tmp_path), "--wandb", "--project", "team/proj"])
    assert "--project 'team/proj' must be 1 to 128 characters" in capsys.readouterr().err


def test_binarize_refuses_test_splits_fairseq_would_name_otherwise(tmp_path):
    # fairseq-preprocess names its --testpref files test, test1, ... by position: a lone "test1" became "test"
    from structmt.data.prepare import binarize

    with pytest.raises(ValueError, match=r"test splits \['test1'\] must be test, test1, \.\.\. in order"):
        binarize(tmp_path, tmp_path / "bin", "en", "de", ["train", "valid", "test1"])
    with pytest.raises(ValueError, match="in order"):
        binarize(tmp_path, tmp_path / "bin", "en", "de", ["train", "valid", "test1", "test"])
    assert not (tmp_path / "bin").exists()

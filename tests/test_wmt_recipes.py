"""WMT recipe code path against a local HTTP server on 127.0.0.1 serving small fixture archives."""

import io
import json
import tarfile
import zipfile
from pathlib import Path

import pytest
from test_pipeline import cut_http_root, http_root  # noqa: F401  (fixtures)

from structmt.data import wmt
from structmt.data.fetch import download_folder
from structmt.data.prepare import PrepConfig
from structmt.data.stages import sha256_file
from structmt.files import DataError

EN = [f"the {i} house is small and the garden number {i} is green" for i in range(300)]
DE = [f"das {i} Haus ist klein und der Garten Nummer {i} ist grün" for i in range(300)]


def _tgz(path: Path, files: dict[str, list[str]]) -> None:
    with tarfile.open(path, "w:gz") as t:
        for name, lines in files.items():
            data = "".join(line + "\n" for line in lines).encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))


def _zip(path: Path, files: dict[str, list[str]]) -> None:
    with zipfile.ZipFile(path, "w") as z:
        for name, lines in files.items():
            z.writestr(name, "".join(line + "\n" for line in lines))


@pytest.fixture
def recipe(http_root, tmp_path, monkeypatch):  # noqa: F811
    root, url = http_root
    base = url.rsplit("/", 1)[0]
    _tgz(root / "corpus-a.tgz", {"training/a.de-en.en": EN[:200], "training/a.de-en.de": DE[:200]})
    _zip(root / "corpus-b.zip", {"b.en": EN[200:], "b.de": DE[200:]})
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    manifest = {
        "name": "wmt_fixture",
        "src": "en",
        "tgt": "de",
        "train": [
            {
                "archive": "https://www.statmt.org/x/corpus-a.tgz",
                "sha256": sha256_file(root / "corpus-a.tgz"),
                "src": "training/a.de-en.en",
                "tgt": "training/a.de-en.de",
            },
            {"archive": "https://opus.example/corpus-b.zip", "sha256": None, "src": "b.en", "tgt": "b.de"},
        ],
        "valid": {"sacrebleu": "wmt13", "name": "newstest2013"},
        "test": {"sacrebleu": "wmt14/full", "name": "newstest2014"},
    }
    (manifests / "wmt_fixture.json").write_text(json.dumps(manifest))
    sets = tmp_path / "sets"
    sets.mkdir()
    asked = []

    def fake_sacrebleu_set(test_set, src, tgt):  # sacreBLEU's own download needs the internet
        asked.append((test_set, src, tgt))
        (sets / f"{test_set.replace('/', '_')}.{src}").write_text("".join(x + "\n" for x in EN[:20]))
        (sets / f"{test_set.replace('/', '_')}.{tgt}").write_text("".join(x + "\n" for x in DE[:20]))
        return sets / f"{test_set.replace('/', '_')}.{src}", sets / f"{test_set.replace('/', '_')}.{tgt}"

    monkeypatch.setattr(wmt, "sacrebleu_set", fake_sacrebleu_set)
    return root, base, manifests, asked


@pytest.mark.reliability  # docs/reliability.md
def test_wmt_recipe_downloads_verifies_and_binarizes(recipe, tmp_path, capsys):
    root, base, manifests, asked = recipe
    out = tmp_path / "wmt"
    cfg = PrepConfig(src="en", tgt="de", vocab_size=120)
    bin_dir = wmt.prepare_wmt("wmt_fixture", out, cfg, base_url=base, manifests=manifests)
    assert (bin_dir / "train.en-de.en.bin").exists() and (bin_dir / "test.en-de.de.bin").exists()
    assert asked == [("wmt13", "en", "de"), ("wmt14/full", "en", "de")]
    assert len((out / "raw" / "train.en").read_text().splitlines()) == 300  # both corpora, cleaned
    assert "corpus-b.zip: no published checksum; recorded sha256" in capsys.readouterr().out
    recorded = (tmp_path / "download" / "corpus-b.zip.sha256").read_text().split()[0]
    assert recorded == sha256_file(root / "corpus-b.zip")
    # second run: nothing downloaded again, every stage up to date
    (root / "corpus-a.tgz").unlink()
    wmt.prepare_wmt("wmt_fixture", out, cfg, base_url=base, manifests=manifests)
    assert "raw: up to date" in capsys.readouterr().out
    # an archive replaced together with its record (a new upstream release, say): its members are extracted again
    before = (out / "raw" / "train.en").read_text()
    _zip(tmp_path / "download" / "corpus-b.zip", {"b.en": [x + " again" for x in EN[200:]], "b.de": DE[200:]})
    (tmp_path / "download" / "corpus-b.zip.sha256").unlink()
    wmt.prepare_wmt("wmt_fixture", out, cfg, base_url=base, manifests=manifests)
    assert (out / "raw" / "train.en").read_text() != before
    assert (out / "extracted" / "corpus-b.zip" / "b.en").read_text().startswith(EN[200] + " again\n")
    # a cached archive that changed is downloaded again, and checked against its recorded checksum: the server's
    # copy is not the one recorded (the "again" release) and is refused, the damaged copy left as it was
    recorded_copy = (tmp_path / "download" / "corpus-b.zip").read_bytes()
    (tmp_path / "download" / "corpus-b.zip").write_bytes(b"tampered")
    with pytest.raises(DataError, match="checksum mismatch for corpus-b.zip downloaded from") as error:
        wmt.prepare_wmt("wmt_fixture", out, cfg, base_url=base, manifests=manifests)
    assert (
        f"the one recorded in {tmp_path / 'download' / 'corpus-b.zip.sha256'} when the archive was first seen"
        in str(error.value)
    )
    assert (tmp_path / "download" / "corpus-b.zip").read_bytes() == b"tampered"
    with pytest.raises(DataError, match=r"checksum mismatch for .*corpus-b.zip: .* cannot download http://127.0.0.1:9"):
        wmt.prepare_wmt("wmt_fixture", out, cfg, base_url="http://127.0.0.1:9", manifests=manifests)  # offline
    (root / "corpus-b.zip").write_bytes(recorded_copy)  # the server has the recorded one: downloaded, used
    capsys.readouterr()
    wmt.prepare_wmt("wmt_fixture", out, cfg, base_url=base, manifests=manifests)
    assert "corpus-b.zip: not the archive recorded; downloading it again" in capsys.readouterr().out
    assert (tmp_path / "download" / "corpus-b.zip").read_bytes() == recorded_copy


@pytest.mark.reliability  # docs/reliability.md
def test_an_archive_without_a_checksum_cut_short_is_refused_and_not_recorded(cut_http_root, tmp_path):  # noqa: F811
    root, url = cut_http_root
    _zip(root / "corpus-b.zip", {"b.en": EN, "b.de": DE})
    cache = tmp_path / "download"
    with pytest.raises(DataError, match=r"cannot download .*corpus-b.zip \(incomplete download of "):
        wmt.fetch_archive("https://opus.example/corpus-b.zip", None, cache, base_url=url.rsplit("/", 1)[0])
    assert not cache.exists() or list(cache.iterdir()) == []  # neither the archive nor a trusted checksum


def test_wmt_errors_name_the_problem(recipe, tmp_path):
    root, base, manifests, _ = recipe
    with pytest.raises(DataError, match="no recipe 'wmt99'"):
        wmt.load_manifest("wmt99", manifests)
    manifest = json.loads((manifests / "wmt_fixture.json").read_text())
    manifest["train"][0]["sha256"] = "f" * 64
    (manifests / "bad.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="checksum mismatch"):
        wmt.prepare_wmt("bad", tmp_path / "bad", PrepConfig(src="en", tgt="de"), base_url=base, manifests=manifests)
    assert not (tmp_path / "download" / "corpus-a.tgz").exists()
    manifest = json.loads((manifests / "wmt_fixture.json").read_text())
    manifest["train"][1]["archive"] = "https://mirror.example/other/corpus-a.tgz"
    (manifests / "twice.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match=r"two training archives share a file name \(corpus-a.tgz, corpus-a.tgz\)"):
        wmt.load_manifest("twice", manifests)
    manifest = json.loads((manifests / "wmt_fixture.json").read_text())
    manifest["train"][1]["tgt"] = "sub/b.en"
    (manifests / "same.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="src and tgt members share the file name 'b.en'"):
        wmt.load_manifest("same", manifests)
    manifest = json.loads((manifests / "wmt_fixture.json").read_text())
    manifest["train"][1]["src"] = "missing.en"
    (manifests / "member.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="has no member 'missing.en'"):
        wmt.prepare_wmt("member", tmp_path / "m", PrepConfig(src="en", tgt="de"), base_url=base, manifests=manifests)
    with pytest.raises(DataError, match="cannot download http://127.0.0.1:9/corpus-a.tgz"):
        wmt.prepare_wmt(
            "wmt_fixture",
            tmp_path / "offline" / "off",  # a download folder of its own (tmp_path's has the archives by now)
            PrepConfig(src="en", tgt="de"),
            base_url="http://127.0.0.1:9",
            manifests=manifests,
        )


def test_shipped_recipes_are_well_formed():
    for name in wmt.RECIPES:
        m = wmt.load_manifest(name)
        assert m["name"] == name and m["train"] and m["test"]["sacrebleu"] and m["test"]["name"]
        assert all(e["archive"].startswith("https://") and e["src"] and e["tgt"] for e in m["train"])


@pytest.mark.reliability  # docs/reliability.md
def test_data_folders_side_by_side_share_one_download_folder(recipe, tmp_path):
    """Another vocabulary of the same recipe (another data folder beside the first) takes the archives, and
    their trust-on-first-use records, from the download folder they share: nothing is fetched again. An
    older checkout's downloads (kept inside the data folder) move there."""
    root, base, manifests, _ = recipe
    data = tmp_path / "data"
    (data / "v120" / "download").mkdir(parents=True)
    (root / "corpus-a.tgz").rename(data / "v120" / "download" / "corpus-a.tgz")  # only the old checkout has it
    (data / "v120" / "download" / "notes.pdf").write_text("the user's own")  # not a download: left where it is
    args = dict(base_url=base, manifests=manifests)
    wmt.prepare_wmt("wmt_fixture", data / "v120", PrepConfig(src="en", tgt="de", vocab_size=120), **args)
    assert [p.name for p in (data / "v120" / "download").iterdir()] == ["notes.pdf"]  # the archive moved, and used
    (data / "v120" / "download" / "notes.pdf").unlink()
    wmt.prepare_wmt("wmt_fixture", data / "v120", PrepConfig(src="en", tgt="de", vocab_size=120), **args)
    assert not (data / "v120" / "download").exists()  # an empty old folder is removed
    for archive in root.iterdir():  # the server has nothing any more
        archive.unlink()
    wmt.prepare_wmt("wmt_fixture", data / "v100", PrepConfig(src="en", tgt="de", vocab_size=100), **args)
    shared = data / "download"
    assert sorted(p.name for p in shared.iterdir()) == ["corpus-a.tgz", "corpus-b.zip", "corpus-b.zip.sha256"]


def _flip(path: Path, text: bytes, to: bytes) -> None:
    """Replace ``text`` (stored uncompressed in ``path``) by ``to``, as a damaged copy would."""
    data = path.read_bytes()
    assert data.count(text) == 1
    path.write_bytes(data.replace(text, to))


@pytest.mark.reliability  # docs/reliability.md
def test_a_damaged_archive_without_a_checksum_is_refused_not_trusted(tmp_path):
    """A .tgz whose data changed extracts other text without an error (tarfile never reads gzip's CRC); a zip
    fails its CRC only when read. Without a published checksum, such an archive is refused before its sha256 is
    recorded as trusted, naming it and what to do."""
    cache = tmp_path / "download"
    cache.mkdir()
    with tarfile.open(cache / "de-en.tgz", "w:gz", compresslevel=0) as t:  # stored: its text lies in the file
        data = "".join(x + "\n" for x in EN).encode()
        info = tarfile.TarInfo("a.en")
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
    _flip(cache / "de-en.tgz", b"garden number 17 ", b"garden number 71 ")
    with tarfile.open(cache / "de-en.tgz") as t:  # what extracting it alone gives: other text, no error
        assert b"garden number 71 " in t.extractfile("a.en").read()
    with zipfile.ZipFile(cache / "b.zip", "w", compression=zipfile.ZIP_STORED) as z:
        z.writestr("b.en", "".join(x + "\n" for x in EN))
    _flip(cache / "b.zip", b"garden number 17 ", b"garden number 71 ")
    for name in ("de-en.tgz", "b.zip"):
        with pytest.raises(
            DataError, match=rf"{name}: a damaged or unreadable archive \(.*\); delete it, and download"
        ):
            wmt.fetch_archive(f"http://127.0.0.1:9/{name}", None, cache)
        assert not (cache / f"{name}.sha256").exists()
    # trusted by an earlier record or a published checksum, the zip's damage is named when it is extracted
    sha = sha256_file(cache / "b.zip")
    (cache / "b.zip.sha256").write_text(f"{sha}  b.zip\n")
    with pytest.raises(DataError, match=r"b.zip: a damaged or unreadable archive \(Bad CRC-32.*\); delete it and its "):
        wmt.extract_members(cache / "b.zip", sha, ["b.en"], tmp_path / "extracted")
    assert not (tmp_path / "extracted").exists()


def test_a_record_without_the_archives_checksum_is_named(tmp_path):
    cache = tmp_path / "download"
    cache.mkdir()
    _zip(cache / "b.zip", {"b.en": EN})
    (cache / "b.zip.sha256").write_text("")
    with pytest.raises(DataError, match=r"b.zip.sha256 holds no sha256 of b.zip; delete it"):
        wmt.fetch_archive("http://127.0.0.1:9/b.zip", None, cache)
    (cache / "b.zip.sha256").write_text("abc  b.zip\n")
    with pytest.raises(DataError, match=r"b.zip.sha256:1: expected '<sha256>  <file name>'"):
        wmt.fetch_archive("http://127.0.0.1:9/b.zip", None, cache)


def test_a_recipe_is_checked_whole_before_anything_is_downloaded(recipe, tmp_path):
    _, base, manifests, _ = recipe
    good = json.loads((manifests / "wmt_fixture.json").read_text())
    cases = {
        "no_tgt": ({k: v for k, v in good.items() if k != "tgt"}, r"'tgt' must be a language code"),
        "no_valid": ({k: v for k, v in good.items() if k != "valid"}, r"'valid' must name a sacreBLEU test set"),
        # a KeyError once training had finished: the test set's name labels its leaderboard rows
        "no_test_name": (good | {"test": {"sacrebleu": good["test"]["sacrebleu"]}}, r"'test' must name a sacreBLEU"),
        # it names the kept hypotheses, <run>.<name>.<lang>: a dot hid a run's first evaluation among its re-runs
        "dotted_test_name": (
            good | {"test": good["test"] | {"name": "newstest2014.full"}},
            r"test.name 'newstest2014.full' must be letters, digits, '_' and '-' only",
        ),
        "bad_sha": (
            good | {"train": [good["train"][0] | {"sha256": "abc"}]},
            r"train\[0\].sha256 must be 64 hex digits, or null",
        ),
        "no_member": (good | {"train": [{"archive": "https://x/y.tgz", "src": "y.en"}]}, r"train\[0\].tgt must be"),
        "no_train": (good | {"train": []}, r"'train' must be a non-empty list"),
        "list": ([good], r"must be a JSON object"),
    }
    for name, (manifest, message) in cases.items():
        (manifests / f"{name}.json").write_text(json.dumps(manifest))
        with pytest.raises(DataError, match=rf"{name}.json: .*{message}"):
            wmt.prepare_wmt(name, tmp_path / name, PrepConfig(src="en", tgt="de"), base_url=base, manifests=manifests)
    assert not (tmp_path / "download").exists()  # refused before any download


def test_an_older_checkouts_download_never_replaces_the_shared_folders_copy(tmp_path):
    """Where the shared download folder already has a file, the data folder's old copy stays where it is: the
    shared copy (or trust-on-first-use record) other data folders use is not overwritten."""
    data = tmp_path / "data"
    (data / "v120" / "download").mkdir(parents=True)
    (data / "download").mkdir()
    (data / "download" / "corpus-b.zip.sha256").write_text("shared\n")
    (data / "v120" / "download" / "corpus-b.zip.sha256").write_text("old\n")
    (data / "v120" / "download" / "corpus-b.zip").write_text("old archive\n")
    shared = download_folder(data / "v120", ["corpus-b.zip", "corpus-b.zip.sha256"])
    assert shared == data / "download"
    assert (shared / "corpus-b.zip.sha256").read_text() == "shared\n"
    assert (shared / "corpus-b.zip").read_text() == "old archive\n"
    assert [p.name for p in (data / "v120" / "download").iterdir()] == ["corpus-b.zip.sha256"]


def test_an_extraction_leaves_no_temporary_folder_and_takes_nothing_from_an_interrupted_ones(tmp_path):
    """A failed extraction removes its temporary folder; files an interrupted one left there are not moved into
    the extracted folder."""
    _zip(tmp_path / "b.zip", {"b.en": EN[:3], "b.de": DE[:3]})
    sha = sha256_file(tmp_path / "b.zip")
    dest = tmp_path / "extracted" / "b.zip"
    with pytest.raises(DataError, match="has no member 'missing.en'"):
        wmt.extract_members(tmp_path / "b.zip", sha, ["missing.en"], dest)
    assert list((tmp_path / "extracted").iterdir()) == []
    (tmp_path / "extracted" / ".b.zip.tmp").mkdir()
    (tmp_path / "extracted" / ".b.zip.tmp" / "stale.en").write_text("from an interrupted extraction\n")
    assert wmt.extract_members(tmp_path / "b.zip", sha, ["b.en"], dest) == [dest / "b.en"]
    assert sorted(p.name for p in dest.iterdir() if not p.name.startswith(".")) == ["b.en"]
    assert (dest / "b.en").read_text() == "".join(x + "\n" for x in EN[:3])
    assert [p.name for p in (tmp_path / "extracted").iterdir()] == ["b.zip"]


def test_a_member_that_is_not_a_regular_file_is_named(tmp_path):
    with tarfile.open(tmp_path / "a.tgz", "w:gz") as t:
        info = tarfile.TarInfo("training")
        info.type = tarfile.DIRTYPE
        t.addfile(info)
    with pytest.raises(DataError, match=r"a.tgz: member 'training' is not a regular file"):
        wmt.extract_members(tmp_path / "a.tgz", sha256_file(tmp_path / "a.tgz"), ["training"], tmp_path / "out")


def test_a_recipe_asked_for_another_language_pair_is_refused_before_anything_is_downloaded(recipe, tmp_path):
    _, base, manifests, _ = recipe
    with pytest.raises(DataError, match="wmt_fixture is en→de, not de→en"):
        wmt.prepare_wmt(
            "wmt_fixture", tmp_path / "w", PrepConfig(src="de", tgt="en"), base_url=base, manifests=manifests
        )
    assert not (tmp_path / "download").exists()


def test_a_record_holding_only_another_archives_checksum_is_not_taken_for_this_ones(tmp_path):
    cache = tmp_path / "download"
    cache.mkdir()
    _zip(cache / "b.zip", {"b.en": EN})
    (cache / "b.zip.sha256").write_text(f"{sha256_file(cache / 'b.zip')}  a.zip\n")
    with pytest.raises(DataError, match=r"b.zip.sha256 holds no sha256 of b.zip; delete it"):
        wmt.fetch_archive("http://127.0.0.1:9/b.zip", None, cache)


def test_a_base_url_replaces_everything_before_the_archives_name(tmp_path, monkeypatch):
    """With or without a trailing slash, the mirror is asked for <base_url>/<archive name>."""
    asked = []

    def download(url, dest, expected):
        asked.append(url)
        dest.parent.mkdir(exist_ok=True)
        _zip(dest, {"b.en": EN[:3]})

    monkeypatch.setattr(wmt, "download", download)
    for i, base in enumerate(("http://mirror.example/wmt/", "http://mirror.example/wmt")):
        wmt.fetch_archive("https://opus.example/x/b.zip", None, tmp_path / f"cache{i}", base_url=base)
    wmt.fetch_archive("https://opus.example/x/b.zip", None, tmp_path / "none")
    assert asked == ["http://mirror.example/wmt/b.zip"] * 2 + ["https://opus.example/x/b.zip"]

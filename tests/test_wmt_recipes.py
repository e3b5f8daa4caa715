"""WMT recipe code path against a local HTTP server on 127.0.0.1 serving small fixture archives."""

import io
import json
import tarfile
import zipfile
from pathlib import Path

import pytest
from test_pipeline import cut_http_root, http_root  # noqa: F401  (fixtures)

from structmt.data import wmt
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
    # a cached archive that changed fails against its recorded checksum
    (tmp_path / "download" / "corpus-b.zip").write_bytes(b"tampered")
    with pytest.raises(DataError, match="checksum mismatch for .*corpus-b.zip") as error:
        wmt.prepare_wmt("wmt_fixture", out, cfg, base_url=base, manifests=manifests)
    assert (
        f"the one recorded in {tmp_path / 'download' / 'corpus-b.zip.sha256'} when the archive was first seen"
        in str(error.value)
    )


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


def test_data_folders_side_by_side_share_one_download_folder(recipe, tmp_path):
    """Another vocabulary of the same recipe (another data folder beside the first) takes the archives, and
    their trust-on-first-use records, from the download folder they share: nothing is fetched again. An
    older checkout's downloads (kept inside the data folder) move there."""
    root, base, manifests, _ = recipe
    data = tmp_path / "data"
    (data / "v120" / "download").mkdir(parents=True)
    (root / "corpus-a.tgz").rename(data / "v120" / "download" / "corpus-a.tgz")  # only the old checkout has it
    args = dict(base_url=base, manifests=manifests)
    wmt.prepare_wmt("wmt_fixture", data / "v120", PrepConfig(src="en", tgt="de", vocab_size=120), **args)
    assert not (data / "v120" / "download").exists()  # moved to the shared folder, and used from there
    for archive in root.iterdir():  # the server has nothing any more
        archive.unlink()
    wmt.prepare_wmt("wmt_fixture", data / "v100", PrepConfig(src="en", tgt="de", vocab_size=100), **args)
    shared = data / "download"
    assert sorted(p.name for p in shared.iterdir()) == ["corpus-a.tgz", "corpus-b.zip", "corpus-b.zip.sha256"]

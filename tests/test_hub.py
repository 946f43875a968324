"""load_pretrained from folders, zips, http/file URLs and named weights; package_pretrained; safety."""

from __future__ import annotations

import functools
import http.server
import json
import shutil
import socket
import threading
import zipfile
from pathlib import Path

import pytest
import torch

from lightning_medaug.cache import cache_folder
from lightning_medaug.hub import (
    PretrainedDownloadError,
    extract_pretrained,
    file_sha256,
    list_pretrained,
    load_pretrained,
    package_pretrained,
    pretrained_index,
    resolve_pretrained,
)
from lightning_medaug.registry import GENERATORS, create_generator


def samples(model) -> torch.Tensor:
    return model.sample(6, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A tiny VAE with non-initial weights, its save_pretrained folder and its zip."""
    torch.manual_seed(0)
    model = create_generator("vae", spatial_dims=2, image_size=16, channels=(8, 16), norm_num_groups=4,
                             latent_channels=2)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    root = tmp_path_factory.mktemp("pretrained")
    folder = model.save_pretrained(root / "vae")
    (folder / "MODEL_CARD.md").write_text("# card\n")
    (folder / "notes.txt").write_text("not part of the weights")
    sha = package_pretrained(folder, root / "site" / "vae.zip")
    return model.eval(), folder, root / "site" / "vae.zip", sha


@pytest.fixture()
def server(pretrained):
    """A localhost HTTP server over the zip's folder, counting GET requests."""
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):
            requests.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            pass

    handler = functools.partial(Handler, directory=str(pretrained[2].parent))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", requests
    httpd.shutdown()
    httpd.server_close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_folder_and_local_zip_reproduce_samples_bit_for_bit(pretrained, tmp_path):
    model, folder, zip_path, sha = pretrained
    expected = samples(model)
    assert torch.equal(samples(load_pretrained(folder)), expected)
    loaded = load_pretrained(zip_path, sha256=sha, cache_dir=tmp_path)
    assert torch.equal(samples(loaded), expected)
    extracted = sorted(p.name for p in (tmp_path / "extracted").iterdir())
    assert len(extracted) == 1
    assert sorted(p.name for p in (tmp_path / "extracted" / extracted[0]).iterdir()) == \
        ["MODEL_CARD.md", "config.json", "model.safetensors"]  # notes.txt was never packaged


def test_package_pretrained_is_deterministic(pretrained, tmp_path):
    _, folder, zip_path, sha = pretrained
    assert package_pretrained(folder, tmp_path / "again.zip") == sha == file_sha256(zip_path)
    assert (tmp_path / "again.zip").read_bytes() == zip_path.read_bytes()
    with zipfile.ZipFile(zip_path) as zf:
        assert zf.namelist() == ["MODEL_CARD.md", "config.json", "model.safetensors"]
        assert {i.date_time for i in zf.infolist()} == {(1980, 1, 1, 0, 0, 0)}
    with pytest.raises(FileNotFoundError, match="save_pretrained"):
        package_pretrained(tmp_path, tmp_path / "empty.zip")
    # a federated generator's record travels with it, and comes out of the zip again
    federated = tmp_path / "federated"
    shutil.copytree(folder, federated)
    (federated / "federation.json").write_text('{"rounds": 2}', encoding="utf-8")
    package_pretrained(federated, tmp_path / "federated.zip")
    with zipfile.ZipFile(tmp_path / "federated.zip") as zf:
        assert "federation.json" in zf.namelist()
    assert (Path(extract_pretrained(tmp_path / "federated.zip", tmp_path / "out")) / "federation.json").is_file()


def test_http_download_verifies_and_is_cached(pretrained, server, tmp_path):
    model, _, _, sha = pretrained
    base, requests = server
    loaded = load_pretrained(f"{base}/vae.zip", sha256=sha, cache_dir=tmp_path)
    assert torch.equal(samples(loaded), samples(model))
    assert requests == ["/vae.zip"]
    again = load_pretrained(f"{base}/vae.zip", sha256=sha, cache_dir=tmp_path)
    assert torch.equal(samples(again), samples(model))
    assert requests == ["/vae.zip"]  # the second load did not download
    assert not list(tmp_path.rglob("*.part"))


def test_file_url_and_cache_env_var(pretrained, tmp_path, monkeypatch):
    model, _, zip_path, _ = pretrained
    monkeypatch.delenv("LIGHTNING_MEDAUG_CACHE", raising=False)
    monkeypatch.setenv("MEDAUG_CACHE", str(tmp_path / "env-cache"))
    loaded = load_pretrained(zip_path.resolve().as_uri())
    assert torch.equal(samples(loaded), samples(model))
    assert len(list((tmp_path / "env-cache" / "downloads").glob("*.zip"))) == 1


def test_former_cache_env_var_still_works_with_a_future_warning(pretrained, tmp_path, monkeypatch):
    model, _, zip_path, _ = pretrained
    monkeypatch.delenv("MEDAUG_CACHE", raising=False)
    monkeypatch.setenv("LIGHTNING_MEDAUG_CACHE", str(tmp_path / "old-cache"))
    with pytest.warns(FutureWarning, match="rename it to \\$MEDAUG_CACHE"):
        loaded = load_pretrained(zip_path.resolve().as_uri())
    assert torch.equal(samples(loaded), samples(model))
    assert len(list((tmp_path / "old-cache" / "downloads").glob("*.zip"))) == 1
    # both set: the documented name wins and the former one is named as ignored
    monkeypatch.setenv("MEDAUG_CACHE", str(tmp_path / "new-cache"))
    with pytest.warns(FutureWarning, match="LIGHTNING_MEDAUG_CACHE=.* is ignored"):
        assert cache_folder() == tmp_path / "new-cache"


def test_sha256_mismatch_names_both_hashes_and_deletes_the_download(pretrained, server, tmp_path):
    _, _, zip_path, sha = pretrained
    base, _ = server
    wrong = "0" * 64
    with pytest.raises(ValueError, match=f"expected {wrong}, got {sha}; the file was deleted"):
        load_pretrained(f"{base}/vae.zip", sha256=wrong, cache_dir=tmp_path)
    assert not [p for p in (tmp_path / "downloads").iterdir()]
    with pytest.raises(ValueError, match=f"expected {wrong}, got {sha}$"):
        load_pretrained(zip_path, sha256=wrong, cache_dir=tmp_path)
    assert zip_path.is_file()  # a user's own zip is never deleted


@pytest.mark.parametrize("evil", ["../escaped.txt", "/tmp/medaug_absolute.txt", "sub/../../escaped.txt"])
def test_zip_slip_entries_are_refused(pretrained, tmp_path, evil):
    _, folder, _, _ = pretrained
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        for name in ("config.json", "model.safetensors"):
            zf.write(folder / name, name)
        zf.writestr(evil, "payload")
    with pytest.raises(ValueError, match="points outside"):
        load_pretrained(bad, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "escaped.txt").exists()
    assert not list((tmp_path / "cache").rglob("*.txt"))


def test_zip_in_a_folder_loads_and_foreign_files_are_refused(pretrained, tmp_path):
    model, folder, _, _ = pretrained
    nested = tmp_path / "nested.zip"
    with zipfile.ZipFile(nested, "w") as zf:
        for name in ("config.json", "model.safetensors", "notes.txt"):
            zf.write(folder / name, f"my_model/{name}")
    assert torch.equal(samples(load_pretrained(nested, cache_dir=tmp_path)), samples(model))
    no_config = tmp_path / "no_config.zip"
    with zipfile.ZipFile(no_config, "w") as zf:
        zf.write(folder / "model.safetensors", "model.safetensors")
    with pytest.raises(ValueError, match="holds no config.json"):
        load_pretrained(no_config, cache_dir=tmp_path)
    (tmp_path / "not_a.zip").write_text("hello")
    with pytest.raises(ValueError, match="not a zip file"):
        extract_pretrained(tmp_path / "not_a.zip", tmp_path)
    with pytest.raises(ValueError, match="sha256 verifies a zip"):
        load_pretrained(folder, sha256="0" * 64)
    with pytest.raises(ValueError, match="only http"):
        load_pretrained("ftp://example.org/w.zip")


def test_offline_gives_one_line_naming_the_url(tmp_path):
    url = f"http://127.0.0.1:{closed_port()}/weights.zip"
    with pytest.raises(PretrainedDownloadError) as info:
        load_pretrained(url, cache_dir=tmp_path)
    message = str(info.value)
    assert url in message and "local folder or .zip" in message and "\n" not in message
    assert isinstance(info.value, ValueError) and isinstance(info.value, ConnectionError)
    assert not list(tmp_path.rglob("*.part")) and not list(tmp_path.rglob("*.zip"))


def test_named_weights_from_an_index(pretrained, tmp_path):
    model, _, zip_path, sha = pretrained
    entry = {"url": zip_path.resolve().as_uri(), "sha256": sha, "generator": "vae", "card": "tiny"}
    index = {"weights": {"vae-tiny": entry,
                         "vae-wrong-family": {**entry, "generator": "cgan"},
                         "vae-offline": {**entry, "url": f"http://127.0.0.1:{closed_port()}/vae.zip"}}}
    assert list_pretrained(index) == ["vae-offline", "vae-tiny", "vae-wrong-family"]
    assert torch.equal(samples(load_pretrained("vae-tiny", cache_dir=tmp_path, index=index)), samples(model))
    with pytest.raises(ValueError, match="index entry is wrong"):
        load_pretrained("vae-wrong-family", cache_dir=tmp_path, index=index)
    with pytest.raises(PretrainedDownloadError, match="could not download http://127.0.0.1"):
        load_pretrained("vae-offline", cache_dir=tmp_path, index=index)
    with pytest.raises(FileNotFoundError, match="Did you mean 'vae-tiny'"):
        load_pretrained("vae-tiyn", cache_dir=tmp_path, index=index)
    with pytest.raises(ValueError, match='needs "generator" and a "url" or a "file"'):
        pretrained_index({"weights": {"x": {"url": "https://x"}}})
    # a zip shipped beside the index: no download, same SHA-256 check
    shipped = {"weights": {"vae-file": {"file": str(zip_path.resolve()), "sha256": sha, "generator": "vae"},
                           "vae-file-bad": {"file": str(zip_path.resolve()), "sha256": "0" * 64, "generator": "vae"}}}
    assert torch.equal(samples(load_pretrained("vae-file", cache_dir=tmp_path, index=shipped)), samples(model))
    with pytest.raises(ValueError, match="SHA-256 mismatch for vae-file-bad"):
        load_pretrained("vae-file-bad", cache_dir=tmp_path, index=shipped)
    assert zip_path.is_file()  # a shipped file is never deleted


def test_shipped_index_is_well_formed(tmp_path):
    index = Path(__file__).parents[1] / "lightning_medaug" / "pretrained_index.json"
    raw = json.loads(index.read_text(encoding="utf-8"))
    names = list_pretrained()
    assert names and names == sorted(raw["weights"])
    for name, entry in pretrained_index().items():
        assert entry["generator"] in GENERATORS, name
        assert entry["card"].strip(), name
        if "file" in entry:  # shipped in the package: present, verified, and it loads
            assert Path(entry["file"]).is_file() and entry["sha256"] == file_sha256(Path(entry["file"])), name
            model = load_pretrained(name, cache_dir=tmp_path)
            assert GENERATORS.name_of(model) == entry["generator"], name
        else:
            assert entry["url"].startswith("https://") and entry["url"].endswith(".zip"), name
            assert entry["sha256"] is None or len(entry["sha256"]) == 64, name


def test_the_privacy_record_travels_with_a_dp_model(pretrained, tmp_path):
    _, folder, _, _ = pretrained
    dp = tmp_path / "dp"
    shutil.copytree(folder, dp)
    (dp / "privacy.json").write_text(json.dumps({"epsilon": 8.0, "delta": 1e-5}), encoding="utf-8")
    package_pretrained(dp, tmp_path / "dp.zip")
    with zipfile.ZipFile(tmp_path / "dp.zip") as zf:
        assert "privacy.json" in zf.namelist() and "notes.txt" not in zf.namelist()
    extracted = resolve_pretrained(tmp_path / "dp.zip", cache_dir=tmp_path / "cache")
    assert json.loads((extracted / "privacy.json").read_text(encoding="utf-8"))["epsilon"] == 8.0

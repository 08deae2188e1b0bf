"""The one intensity-window rule: the policy itself, and every path that resolves it.

A volume gets the same ``(low, high)`` through a Session, in-context supports and queries,
and adapters; an adapter runs with the window it was trained with unless one is given; files
written before windows were stored still load (with the default they were made with).
"""

import json

import numpy as np
import pytest
import torch

from fmseg import Box, Session, Window
from fmseg.adapters.api import load_adapter, save_adapter, train_adapter_iter
from fmseg.adapters.bases import AdapterConfig
from fmseg.adapters.data import Annotation
from fmseg.adapters.facade import apply_iter
from fmseg.adapters.trainer import TrainSettings
from fmseg.incontext import SupportSet, add_slice, normalise, volume_window
from fmseg.incontext.segment import volume_queries
from fmseg.progress import drain
from fmseg.registry import load_tiny
from fmseg.window import DEFAULT_WINDOW, intensity_window

FAST = TrainSettings(steps=3, eval_every=2, batch_size=2)
TRAINED = Window.fixed(-1.0, 3.0)


def test_policy_resolves_fixed_and_percentile_windows():
    vol = np.arange(1000, dtype=np.float32).reshape(10, 10, 10)
    assert Window.of(None) == DEFAULT_WINDOW == Window.percentiles(0.5, 99.5)
    assert Window.of((-160, 240)) == Window.fixed(-160, 240)
    assert Window.of(TRAINED) is TRAINED
    assert intensity_window(vol, (-160, 240)) == (-160.0, 240.0)
    assert intensity_window(vol, None) == pytest.approx(tuple(np.percentile(vol, (0.5, 99.5))))
    assert Window.percentiles(10, 90).resolve(vol) == pytest.approx((99.9, 899.1))
    assert intensity_window(np.full((4, 4), 7.0), None) == (7.0, 8.0)  # never empty
    with pytest.raises(ValueError, match="mode"):
        Window("auto")
    with pytest.raises(ValueError, match="percentiles"):
        Window.percentiles(99, 1)


@pytest.mark.parametrize("window", [DEFAULT_WINDOW, TRAINED, Window.percentiles(2, 98)])
def test_policy_round_trips_through_plain_dicts(window):
    stored = json.loads(json.dumps(window.to_dict()))
    assert Window.from_dict(stored) == window
    assert Window.from_dict(None) == DEFAULT_WINDOW  # files from before windows were stored


@pytest.mark.parametrize("window", [None, (-50.0, 120.0), Window.percentiles(1, 99)])
def test_session_incontext_and_adapters_resolve_the_same_window(window):
    # Above 4 million voxels percentiles come from a strided sample: every path must agree.
    rng = np.random.default_rng(0)
    vol = rng.gamma(2.0, 40.0, size=(4, 1024, 1000)).astype(np.float32)
    expected = intensity_window(vol, window)
    assert Session.from_registry(
        vol, point_model=None, device="cpu", window=window, load=load_tiny
    ).window == (expected)
    support = SupportSet()
    labels = np.zeros(vol.shape, np.uint8)
    labels[0, 100:200, 100:200] = 1
    add_slice(support, vol, labels, 0, 0, window)
    assert support.examples[0].window == expected
    np.testing.assert_array_equal(support.examples[0].image, normalise(vol[0], expected))
    queries = volume_queries(vol, 0, window, [1], None)[2]
    np.testing.assert_array_equal(queries[0], normalise(vol[1], expected))
    if window is None:
        assert volume_window(vol) == expected


def _annotation() -> Annotation:
    rng = np.random.default_rng(0)
    img = rng.normal(size=(6, 48, 48)).astype(np.float32)
    lab = np.zeros(img.shape, np.uint8)
    lab[:, 14:30, 10:34] = 2
    img[lab == 2] += 2.0
    return Annotation(img, lab, 2, axis=0, slices=(1, 3, 4))


def _trained(tmp_path, method: str, window=TRAINED):
    work = train_adapter_iter(
        [_annotation()], "litemedsam", AdapterConfig(method), FAST, load=load_tiny, window=window
    )
    res = drain(work)
    return save_adapter(tmp_path / f"{method}.pt", res.model)


def test_a_box_adapter_runs_in_a_session_with_its_training_window(tmp_path):
    path = _trained(tmp_path, "decoder")  # the box-prompted decoder: a Session applies it
    assert load_adapter(path, load=load_tiny).window == TRAINED
    vol = _annotation().image
    kwargs = {"point_model": None, "device": "cpu", "adapter": str(path), "load": load_tiny}
    session = Session.from_registry(vol, **kwargs)
    assert session.window == (-1.0, 3.0) and session.window_policy == TRAINED
    given = Session.from_registry(vol, window=None, **kwargs)
    assert given.window == session.window  # None means "the adapter's"
    override = Session.from_registry(vol, window=(0.0, 1.0), **kwargs)
    assert override.window == (0.0, 1.0)  # an explicit window wins


@pytest.mark.parametrize(("method", "boxes"), [("linear-probe", None), ("decoder", True)])
def test_the_facade_applies_an_adapter_with_its_training_window(tmp_path, method, boxes):
    model = load_adapter(_trained(tmp_path, method), load=load_tiny)
    vol = _annotation().image * 1.5 + 0.3  # another volume: the fixed window still holds
    kw = {"axis": 0, "slices": [2], "boxes": {2: Box(8, 10, 40, 36)} if boxes else None}
    stored = drain(apply_iter(model, vol, **kw))
    np.testing.assert_array_equal(stored, drain(apply_iter(model, vol, window=TRAINED, **kw)))
    other = drain(apply_iter(model, vol, window=DEFAULT_WINDOW, **kw))
    assert np.abs(other - stored).max() > 1e-4  # the override is used, so the default is not


def test_percentile_adapters_take_percentiles_of_the_new_volume(tmp_path):
    model = load_adapter(_trained(tmp_path, "linear-probe", window=None), load=load_tiny)
    assert model.window == DEFAULT_WINDOW
    vol = _annotation().image * 1.5 + 0.3
    fixed = intensity_window(vol, None)  # the new volume's own percentiles
    got = drain(apply_iter(model, vol, 0, [2]))
    np.testing.assert_array_equal(got, drain(apply_iter(model, vol, 0, [2], window=fixed)))


def test_adapter_files_without_a_window_load_with_the_default(tmp_path):
    path = _trained(tmp_path, "linear-probe")
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["window"] == TRAINED.to_dict()
    del ckpt["window"]  # as written before windows were stored
    torch.save(ckpt, path)
    assert load_adapter(path, load=load_tiny).window == DEFAULT_WINDOW


def test_support_sets_record_each_example_window_and_old_files_load(tmp_path):
    vol = np.random.default_rng(1).normal(50, 20, (4, 24, 24)).astype(np.float32)
    labels = np.zeros(vol.shape, np.uint8)
    labels[:, 5:15, 5:15] = 1
    support = SupportSet()
    add_slice(support, vol, labels, 0, 1, (0.0, 100.0))
    add_slice(support, vol, labels, 0, 2)
    path = support.save(tmp_path / "s")
    loaded = SupportSet.load(path)
    assert [e.window for e in loaded.examples] == [(0.0, 100.0), intensity_window(vol, None)]
    meta_path = path.with_suffix(".json")
    meta = json.loads(meta_path.read_text())
    meta["version"] = 1
    for m in meta["examples"]:
        del m["window"]
    meta_path.write_text(json.dumps(meta))
    old = SupportSet.load(path)
    assert [e.window for e in old.examples] == [None, None]
    for a, b in zip(old.examples, loaded.examples, strict=True):
        np.testing.assert_array_equal(a.image, b.image)

"""Quick adapters (issue 18): time limit, early stopping, content-hash embedding cache, CLI flag."""

import nibabel as nib
import numpy as np
import pytest

import fmseg.adapters.api as api
from fmseg.adapters import embed_store
from fmseg.adapters import trainer as T
from fmseg.adapters.api import train_adapter_iter
from fmseg.adapters.bases import AdapterConfig
from fmseg.adapters.facade import CPU_TIME_LIMIT, apply_iter, default_settings
from fmseg.adapters.trainer import TrainSettings
from fmseg.cli import main
from fmseg.interactive.predictor import SamPredictor
from fmseg.progress import drain
from fmseg.registry import load_model, load_tiny


def _annotation(slices=(1, 3, 5, 6), shift=0.0):
    rng = np.random.default_rng(0)
    img = rng.normal(size=(8, 48, 48)).astype(np.float32) + shift
    lab = np.zeros((8, 48, 48), np.uint8)
    lab[:, 14:30, 10:34] = 2
    img[lab == 2] += 2.0
    return api.Annotation(img, lab, 2, axis=0, slices=slices)


def _train(settings, method="norm-affine", head="box", ann=None):
    config = AdapterConfig(method=method, head=head)
    ann = ann or _annotation()
    return drain(train_adapter_iter([ann], "litemedsam", config, settings, load=load_tiny))


class FakeClock:
    """Advances ``tick`` seconds on every reading."""

    def __init__(self, tick):
        self.now, self.tick = 0.0, tick

    def __call__(self):
        self.now += self.tick
        return self.now


def test_time_limit_is_honoured(monkeypatch):
    monkeypatch.setattr(T, "clock", FakeClock(1.0))  # each reading: one more second
    settings = TrainSettings(steps=100, eval_every=50, batch_size=1, time_limit=2.5)
    res = _train(settings)
    # Readings 1 (start), 2, 3, 4: the step that crosses 2.5 s is the last one.
    assert res.stopped == "time limit" and res.steps_run == 3, (res.stopped, res.steps_run)
    # Out of time between validations: the last state is still validated and may be kept.
    assert res.history[-1]["val_dice"] is not None


def test_no_time_limit_runs_every_step(monkeypatch):
    monkeypatch.setattr(T, "clock", FakeClock(1000.0))
    res = _train(TrainSettings(steps=3, eval_every=1, batch_size=1, patience=10))
    assert res.steps_run == 3 and res.stopped == ""


def test_early_stopping_on_validation():
    # A zero learning rate never improves the validation loss: stop after `patience` checks.
    settings = TrainSettings(steps=50, lr=0.0, eval_every=1, patience=2, batch_size=1)
    res = _train(settings)
    assert res.stopped == "early stopping" and res.steps_run == 3, res.steps_run
    assert res.best_val_dice is not None  # 4 annotated slices: one was held out


def _count_encoder(monkeypatch):
    calls = []
    real = SamPredictor.embed_batch

    def counting(self, inputs):
        calls.append(len(inputs))
        return real(self, inputs)

    monkeypatch.setattr(SamPredictor, "embed_batch", counting)
    return calls


def test_training_embeddings_are_reused_across_runs(monkeypatch):
    calls = _count_encoder(monkeypatch)
    settings = TrainSettings(steps=2, batch_size=1)
    _train(settings)
    assert sum(calls) == 4  # the four annotated slices, embedded once
    assert len(list(embed_store.disk_dir().glob("*.pt"))) == 4
    calls.clear()
    second = _train(settings, method="bitfit")  # another run, another method, same slices
    assert calls == [] and second.model._slice_embedder.hits == 4
    _train(settings, ann=_annotation(shift=1.0))  # other intensities: other content, new pass
    assert sum(calls) == 4


def test_disk_cache_can_be_off(monkeypatch):
    _train(TrainSettings(steps=1, batch_size=1, cache_embeddings=False))
    assert not embed_store.disk_dir().exists() or not any(embed_store.disk_dir().iterdir())


def test_first_apply_shares_the_training_pass(monkeypatch):
    calls = _count_encoder(monkeypatch)
    ann = _annotation()
    res = _train(TrainSettings(steps=1, batch_size=1), method="linear-probe", head="auto", ann=ann)
    calls.clear()
    prob = drain(apply_iter(res.model, ann.image, axis=0, slices=[1, 3, 2]))
    assert calls == [1]  # only slice 2 was not a training slice
    again = drain(apply_iter(res.model, ann.image, axis=0, slices=[1, 3, 2]))
    assert calls == [1] and np.array_equal(prob, again)


def test_default_settings_time_limit():
    assert default_settings("decoder", device="cpu").time_limit == CPU_TIME_LIMIT == 60.0
    assert default_settings("decoder", device="cuda").time_limit is None
    assert default_settings("decoder", time_limit=0, device="cpu").time_limit is None
    assert default_settings("decoder", time_limit=12.5).time_limit == 12.5


@pytest.fixture
def tiny_cli(monkeypatch, tmp_path):
    def tiny_load(name, checkpoint=None, tiny=False, device=None):
        return load_model(name, tiny=True, device=device)

    monkeypatch.setattr(api, "load_model", tiny_load)
    monkeypatch.setattr(api, "base_fingerprint", lambda *a, **k: "tiny-random")
    ann = _annotation()
    affine = np.eye(4)
    nib.save(nib.Nifti1Image(ann.image, affine), tmp_path / "img.nii.gz")
    nib.save(nib.Nifti1Image(ann.labels, affine), tmp_path / "lab.nii.gz")
    return f"{tmp_path / 'img.nii.gz'}:{tmp_path / 'lab.nii.gz'}:1,3,5,6"


def test_cli_time_limit_flag(tiny_cli, tmp_path, monkeypatch, capsys):
    seen = []
    real = T.train_iter

    def spy(model, feeder, settings):
        seen.append(settings.time_limit)
        return (yield from real(model, feeder, settings))

    monkeypatch.setattr(api, "train_iter", spy)
    base = ["adapt", "--train", tiny_cli, "--label", "2", "--axis", "0", "--steps", "2"]
    out = str(tmp_path / "a.pt")
    assert main([*base, "--device", "cpu", "--time-limit", "7.5", "--out", out]) == 0
    assert main([*base, "--device", "cpu", "--out", out]) == 0
    assert main([*base, "--device", "cpu", "--time-limit", "0", "--out", out]) == 0
    assert seen == [7.5, CPU_TIME_LIMIT, None]
    assert '"stopped"' in capsys.readouterr().out
    assert main([*base, "--time-limit", "-1", "--out", out]) == 2
    assert "--time-limit must be 0 (no limit) or more" in capsys.readouterr().err

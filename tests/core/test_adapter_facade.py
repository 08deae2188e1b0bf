"""The adapter facade: the choices front ends offer are exactly the ones the core builds.

Every method x where x head on a 2D and a 3D tiny random-weight base: an allowed combination
resolves to a configuration the adapter machinery builds as asked; any other one is refused by
``resolve_config`` and is one the core itself refuses or would silently change.
"""

import numpy as np
import pytest
import torch

from fmseg.adapters.api import AdapterError, build_adapted
from fmseg.adapters.bases import AdapterConfig
from fmseg.adapters.facade import (
    HEADS,
    WHERES,
    adapter_bases,
    allowed_heads,
    allowed_wheres,
    apply_iter,
    default_settings,
    labelled_slices,
    resolve_config,
)
from fmseg.adapters.methods import METHODS, PEFT_METHODS, MethodError, parse_method
from fmseg.adapters.trainer import DEFAULT_LR
from fmseg.interactive.prompts import Box
from fmseg.progress import Progress, drain
from fmseg.registry import load_tiny

BASES = ("litemedsam", "hdbet")  # 2D promptable, 3D volumetric
ALL_METHODS = (*METHODS, "lora+decoder", "bitfit+linear-probe")


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("where", WHERES)
@pytest.mark.parametrize("method", ALL_METHODS)
@pytest.mark.parametrize("base", BASES)
def test_front_end_choices_and_the_core_agree(base, method, where, head):
    where_ok = where in allowed_wheres(base, method, head)
    assert where_ok == (head in allowed_heads(base, method, where))  # either way round
    if where_ok:
        config = resolve_config(base, method, where, head)
        model = build_adapted(base, config, load=load_tiny)  # the core accepts it, as asked
        assert (config.where, model.head_kind) == (where, head)
        assert sum(model.trainable.values()) > 0
        return
    with pytest.raises(MethodError, match="does not fit"):
        resolve_config(base, method, where, head)
    try:  # what the core does with the raw choice: refuses it, or builds something else
        model = build_adapted(base, AdapterConfig(method, where, head), load=load_tiny)
    except MethodError:
        return
    ignored_where = not set(parse_method(method)) & set(PEFT_METHODS)
    assert model.head_kind != head or ignored_where


@pytest.mark.parametrize("method", PEFT_METHODS)
def test_peft_on_both_parts_never_takes_the_prompt_free_head(method):
    # napari used to offer this combination; the core refuses it.
    with pytest.raises(MethodError, match="prompt-free head does not use the mask decoder"):
        build_adapted("litemedsam", AdapterConfig(method, "both", "auto"), load=load_tiny)
    assert allowed_heads("litemedsam", method, "both") == ("box",)
    assert allowed_wheres("litemedsam", method, "auto") == ("encoder",)
    assert resolve_config("litemedsam", method, "both").head == "box"
    with pytest.raises(MethodError, match="head='auto' does not fit .* use 'box'"):
        resolve_config("litemedsam", method, "both", "auto")


@pytest.mark.parametrize(
    ("base", "method", "where", "head"),
    [
        ("litemedsam", "spatial-adapter", "decoder", "auto"),  # black-box: prompt-free
        ("litemedsam", "decoder", "decoder", "box"),  # trains the box-prompted decoder
        ("litemedsam", "lora", "decoder", "box"),
        ("litemedsam", "lora+decoder", "encoder", "box"),  # the decoder is fully trained
        ("hdbet", "decoder", "decoder", "auto"),  # 3D: always prompt-free
        ("hdbet", "lora", "decoder", "auto"),
    ],
)
def test_defaults_are_the_first_allowed_choices(base, method, where, head):
    config = resolve_config(base, method, rank=8)
    assert (config.where, config.head, config.rank) == (where, head, 8)
    assert allowed_wheres(base, method)[0] == where
    assert allowed_heads(base, method, where)[0] == head


def test_free_head_defaults_to_prompt_free_and_bad_names_are_refused():
    assert allowed_heads("litemedsam", "lora", "encoder") == ("auto", "box")
    assert resolve_config("litemedsam", "lora", "encoder").head == "auto"
    assert allowed_wheres("litemedsam", "decoder") == ("decoder",)  # where unused: no choice
    assert allowed_heads("litemedsam", "lora", "sideways") == ()
    with pytest.raises(MethodError, match="where='sideways' does not fit"):
        resolve_config("litemedsam", "lora", "sideways")
    with pytest.raises(MethodError, match="unknown adapter method"):
        resolve_config("litemedsam", "affine-norm")
    with pytest.raises(AdapterError, match="adapters need a promptable or 3D one"):
        resolve_config("universeg-v1", "lora")
    assert {"litemedsam", "hdbet"} <= set(adapter_bases())
    assert "universeg-v1" not in adapter_bases()


@pytest.mark.parametrize(
    ("steps", "every", "patience"), [(200, 10, 5), (40, 2, 20), (5, 1, 40), (None, 10, 5)]
)
def test_default_settings_validate_about_twenty_times(steps, every, patience):
    settings = default_settings("decoder", steps)
    assert (settings.eval_every, settings.patience) == (every, patience)
    assert settings.steps == (steps or 200) and settings.lr == DEFAULT_LR["decoder"]
    assert default_settings("lora", 40, 0.5, eval_every=3, seed=2).lr == 0.5
    assert default_settings("lora", 40, eval_every=3).eval_every == 3


def test_labelled_slices():
    labels = np.zeros((5, 4, 6), np.uint8)
    labels[1, 0, 0] = 2
    labels[3, 1:3, 4] = 1
    assert labelled_slices(labels, 0) == (1, 3)
    assert labelled_slices(labels, 0, label=1) == (3,)
    assert labelled_slices(labels, 2) == (0, 4)
    assert labelled_slices(labels > 0, 1) == (0, 1, 2)  # boolean masks too
    assert labelled_slices(labels[0], 0) == ()


def _volume():
    rng = np.random.default_rng(0)
    return rng.normal(size=(3, 32, 32)).astype(np.float32)


def test_apply_iter_runs_2d_adapters_on_slices_and_3d_ones_on_the_volume():
    volume, seen = _volume(), []
    probe = build_adapted(
        "litemedsam", resolve_config("litemedsam", "linear-probe"), load=load_tiny
    )
    prob = drain(apply_iter(probe, volume, axis=0, slices=[1]), seen.append)
    assert prob.shape == volume.shape and prob[1].min() > 0 and not prob[[0, 2]].any()
    assert [p.done for p in seen] == [1] and all(isinstance(p, Progress) for p in seen)
    box_head = build_adapted("litemedsam", resolve_config("litemedsam", "decoder"), load=load_tiny)
    with pytest.raises(ValueError, match="give a box per slice"):
        drain(apply_iter(box_head, volume))
    boxed = drain(apply_iter(box_head, volume, 0, boxes={2: Box(4, 4, 20, 20)}))
    assert boxed[2].min() > 0 and not boxed[:2].any()
    torch.manual_seed(0)
    volumetric = build_adapted("hdbet", resolve_config("hdbet", "linear-probe"), load=load_tiny)
    prob = drain(apply_iter(volumetric, volume, axis=2, slices=[0], spacing=(2.0, 1.0, 1.0)))
    assert prob.shape == volume.shape and prob.min() > 0  # the whole volume, whatever axis

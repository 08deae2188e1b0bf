"""Scribbles and lassos -> prompts (pure geometry; the routing is tested on sessions)."""

import numpy as np
import pytest

from fmseg.interactive import scribbles as sc
from fmseg.interactive.prompts import Box, PromptError, Prompts


def test_scribble_points_are_evenly_spaced_along_the_path():
    path = np.array([[0.0, 10.0], [30.0, 10.0], [30.0, 40.0]])  # 60 px long
    pts = sc.scribble_points(path, positive=False, n=3)
    assert [(p.x, p.y) for p in pts] == [(10.0, 10.0), (30.0, 10.0), (30.0, 30.0)]
    assert not any(p.positive for p in pts)


def test_short_scribbles_give_fewer_points_and_bad_paths_are_named():
    assert len(sc.scribble_points(np.array([[5.0, 5.0], [5.5, 5.0]]), n=5)) == 1
    assert len(sc.scribble_points(np.array([[5.0, 5.0]]), n=3)) == 1  # a dot is one click
    with pytest.raises(PromptError, match="finite"):
        sc.scribble_points(np.array([[0.0, np.nan], [1.0, 1.0]]))
    with pytest.raises(PromptError, match=r"\(V, 2\)"):
        sc.scribble_points(np.zeros((3, 3)))


def test_polygon_mask_and_its_box():
    square = np.array([[10.0, 5.0], [20.0, 5.0], [20.0, 15.0], [10.0, 15.0]])
    mask = sc.polygon_mask(square, (32, 32))
    assert mask[10, 15] and not mask[2, 2] and not mask[10, 25]
    box = sc.lasso_box(square, (32, 32))
    assert isinstance(box, Box) and 9 <= box.x0 <= 11 and 19 <= box.x1 <= 21
    assert sc.clip_to_lasso(np.ones((32, 32), bool), mask).sum() == mask.sum()
    with pytest.raises(PromptError, match="3 vertices"):
        sc.polygon_mask(square[:2], (32, 32))
    with pytest.raises(PromptError, match="no pixel"):
        sc.polygon_mask(square + 100, (32, 32))


def test_prompts_carry_a_lasso_and_validate_it():
    p = Prompts().with_lasso(np.array([[1, 1], [9, 1], [9, 9]]))
    assert not p.empty and p.lasso == ((1.0, 1.0), (9.0, 1.0), (9.0, 9.0))
    assert p.with_lasso(None).empty
    p.validate((16, 16))
    with pytest.raises(PromptError, match="does not overlap"):
        Prompts(lasso=((50, 50), (60, 50), (60, 60))).validate((16, 16))

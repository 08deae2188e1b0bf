"""Pure conversions of the scribbles layer and of session prompts back to layer data."""

import numpy as np

from fmseg.interactive.prompts import Box, Point, Prompts
from napari_fmseg import _layers as L


def test_paths_become_clicks_and_the_last_polygon_the_lasso():
    path = np.array([[2, 10, 0], [2, 10, 30]], float)  # (z, y, x): 30 px along x on slice 2
    poly1 = np.array([[2, 0, 0], [2, 0, 9], [2, 9, 9]], float)
    poly2 = np.array([[2, 1, 1], [2, 1, 8], [2, 8, 8], [2, 8, 1]], float)
    other = np.array([[3, 5, 5], [3, 5, 9]], float)
    shapes = [path, poly1, poly2, other]
    kinds = ["path", "polygon", "polygon", "path"]
    points, lasso = L.scribbles_on_slice(shapes, kinds, [False, True, True, True], 2)
    assert [(p.x, p.y) for p in points] == [(3, 10), (9, 10), (15, 10), (21, 10), (27, 10)]
    assert not any(p.positive for p in points)
    assert lasso == ((1, 1), (8, 1), (8, 8), (1, 8))
    out = L.prompts_by_slice(np.zeros((0, 3)), None, [], (48, 48), (shapes, kinds, None))
    assert sorted(out) == [2, 3] and out[3].lasso is None and len(out[3].points) == 4  # 4 px long


def test_clicks_come_first_then_the_scribble_clicks():
    pts = np.array([[1, 4, 4]], float)
    scr = ([np.array([[1, 20, 0], [1, 20, 3]], float)], ["path"], None)
    out = L.prompts_by_slice(pts, [True], [], (32, 32), scr)
    assert out[1].points[0] == Point(4, 4, True) and len(out[1].points) == 4


def test_layers_from_prompts_round_trip():
    prompts = {
        (0, 3): Prompts((Point(5, 6, True), Point(7, 8, False)), Box(1, 2, 10, 12)),
        (0, 4): Prompts(lasso=((1, 1), (9, 1), (9, 9))),
        (1, 2): Prompts((Point(1, 1),)),  # another axis: not shown
    }
    data = L.layers_from_prompts(prompts, 3)
    assert data["points"].tolist() == [[3, 6, 5], [3, 8, 7]]
    assert data["positive"].tolist() == [True, False]
    back = L.prompts_by_slice(
        data["points"], data["positive"], data["boxes"], (32, 32),
        (data["lassos"], ["polygon"] * len(data["lassos"]), None),
    )  # fmt: skip
    assert back == {3: prompts[(0, 3)], 4: prompts[(0, 4)]}
    flat = L.layers_from_prompts({(0, 0): Prompts((Point(2, 3),))}, 2)
    assert flat["points"].tolist() == [[3, 2]]

"""Per-interaction undo and redo for a :class:`~fmseg.interactive.session.Session`.

Every interaction (prompts set or cleared, working mask set, start from a label, propagation,
commit) is recorded as one :class:`Step`: the session's small state before and after (prompt
and per-slice dictionaries, copied shallowly: their values are never changed in place) and
the *differences* of its two arrays, the working mask (the voxels that flipped) and the label
volume (the voxels that changed, with their old and new values). Undo and redo apply a step
backwards or forwards, so undoing a commit brings back both the labels and the working object
it committed.

A target is any object with ``mask`` (bool array), ``labels`` (integer array, same shape),
``history_state() -> dict`` and ``restore_history_state(dict)``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

#: Steps kept by default (the oldest are dropped first).
DEPTH = 100
Region = tuple[int, int] | None  # (axis, index) of the one slice an interaction may change


class Target(Protocol):
    """What :class:`History` records and restores."""

    mask: np.ndarray
    labels: np.ndarray

    def history_state(self) -> dict[str, Any]:
        """Small state to keep whole (dictionaries of prompts, ...)."""
        ...

    def restore_history_state(self, state: dict[str, Any]) -> None:
        """Put back a :meth:`history_state`."""
        ...


def _view(array: np.ndarray, region: Region) -> np.ndarray:
    """The part of ``array`` an interaction may change: one slice (a view) or all of it."""
    if region is None:
        return array
    idx: list[Any] = [slice(None)] * array.ndim
    idx[region[0]] = region[1]
    return array[tuple(idx)]


@dataclass(frozen=True)
class Voxels:
    """Where an array changed: flat indices when few voxels did, else packed bits.

    Attributes:
        shape: Shape of the array (or region) compared.
        count: Voxels that changed.
        data: ``(count,)`` flat C-order indices, or the packed ``(size / 8,)`` changed mask.
    """

    shape: tuple[int, ...]
    count: int
    data: np.ndarray

    @classmethod
    def of(cls, changed: np.ndarray) -> Voxels:
        """Encode a boolean ``changed`` array in the smaller form (1 bit or 4-8 bytes/voxel)."""
        count = int(np.count_nonzero(changed))
        if count * 32 < changed.size:
            at = np.flatnonzero(changed)
            return cls(changed.shape, count, at.astype(_index_dtype(changed.size)))
        return cls(changed.shape, count, np.packbits(changed, axis=None))

    def where(self) -> tuple[np.ndarray, ...] | np.ndarray:
        """An index for the array: index tuple or boolean mask (both in C order)."""
        if self.data.dtype == np.uint8:
            size = int(np.prod(self.shape))
            return np.unpackbits(self.data, count=size).reshape(self.shape).view(bool)
        return np.unravel_index(self.data, self.shape)


@dataclass(frozen=True)
class Step:
    """One recorded interaction.

    Attributes:
        name: What the user did (shown as "Undo <name>").
        before, after: The target's :meth:`history_state` around the interaction.
        region: The slice ``(axis, index)`` the arrays were compared on, or None (all).
        flips: Working-mask voxels (of the region) that flipped.
        label_at: Label voxels (of the region) that changed.
        label_old, label_new: Their values before and after, in C order.
    """

    name: str
    before: dict[str, Any]
    after: dict[str, Any]
    region: Region
    flips: Voxels
    label_at: Voxels
    label_old: np.ndarray
    label_new: np.ndarray

    @property
    def empty(self) -> bool:
        """True when the interaction changed nothing."""
        return (
            self.flips.count == 0
            and self.label_at.count == 0
            and _same_state(self.before, self.after)
        )

    def apply(self, target: Target, forward: bool) -> None:
        """Redo (``forward``) or undo this step on ``target``."""
        mask = _view(target.mask, self.region)
        if self.flips.count:
            at = self.flips.where()
            mask[at] = ~mask[at]
        if self.label_at.count:
            labels = _view(target.labels, self.region)
            labels[self.label_at.where()] = self.label_new if forward else self.label_old
        target.restore_history_state(self.after if forward else self.before)


def _same(x: Any, y: Any) -> bool:
    """Equal values; arrays only when they are the same object (they are never edited)."""
    if x is y:
        return True
    if isinstance(x, dict) and isinstance(y, dict):
        return x.keys() == y.keys() and all(_same(x[k], y[k]) for k in x)
    if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
        return False
    try:
        return bool(x == y)
    except (TypeError, ValueError):  # values holding arrays (predictions): not the same
        return False


def _same_state(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return _same(a, b)


def _index_dtype(n: int) -> type:
    return np.int32 if n < 2**31 else np.int64


class History:
    """Undo and redo stacks of :class:`Step` for one target.

    Args:
        depth: Steps kept; the oldest are dropped first.
    """

    def __init__(self, depth: int = DEPTH) -> None:
        if depth < 1:
            raise ValueError(f"history depth must be at least 1, got {depth}")
        self.depth = depth
        self._undo: list[Step] = []
        self._redo: list[Step] = []
        self._recording = False

    @contextmanager
    def record(
        self, target: Target, name: str, region: Region = None, labels: bool = False
    ) -> Iterator[None]:
        """Record what the ``with`` body does to ``target`` as one step (nested: the outer).

        The step is kept even when the body raises or a generator running in it is closed
        early (a cancelled propagation keeps the slices done, and they can be undone).

        Args:
            target: The session.
            name: What the user did.
            region: ``(axis, index)`` when only that slice of the mask (and labels) can change:
                the arrays are compared there only.
            labels: Whether the label volume can change (it is compared only then).
        """
        if self._recording:
            yield
            return
        self._recording = True
        before = target.history_state()
        mask0 = _view(target.mask, region).copy()
        labels0 = _view(target.labels, region).copy() if labels else None
        try:
            yield
        finally:
            self._recording = False
            self._push(target, name, region, before, mask0, labels0)

    def _push(self, target, name, region, before, mask0, labels0) -> None:
        flips = Voxels.of(np.not_equal(mask0, _view(target.mask, region), out=mask0))
        if labels0 is None:
            at = Voxels.of(np.zeros((0,), bool))
            old = new = np.zeros(0, target.labels.dtype)
        else:
            now = _view(target.labels, region)
            at = Voxels.of(labels0 != now)
            where = at.where()
            old, new = labels0[where], now[where]
        step = Step(name, before, target.history_state(), region, flips, at, old, new)
        if step.empty:
            return
        self._undo.append(step)
        del self._undo[: -self.depth]
        self._redo.clear()

    def undo(self, target: Target) -> str | None:
        """Undo the last step; returns its name, or None when there is nothing to undo."""
        if not self._undo:
            return None
        step = self._undo.pop()
        step.apply(target, forward=False)
        self._redo.append(step)
        return step.name

    def redo(self, target: Target) -> str | None:
        """Redo the last undone step; returns its name, or None when there is none."""
        if not self._redo:
            return None
        step = self._redo.pop()
        step.apply(target, forward=True)
        self._undo.append(step)
        return step.name

    @property
    def undo_name(self) -> str | None:
        """Name of the step :meth:`undo` would undo (None: nothing)."""
        return self._undo[-1].name if self._undo else None

    @property
    def redo_name(self) -> str | None:
        """Name of the step :meth:`redo` would redo (None: nothing)."""
        return self._redo[-1].name if self._redo else None

    def clear(self) -> None:
        """Forget every step."""
        self._undo.clear()
        self._redo.clear()


class SessionHistory:
    """Undo and redo of a session (mixed into :class:`~fmseg.interactive.session.Session`).

    The session's small state is its ``prompts``, ``last`` and ``bases`` dictionaries; its
    ``mask`` and ``labels`` are diffed by :class:`History`.
    """

    history: History
    prompts: dict
    last: dict
    bases: dict

    def undo(self) -> bool:
        """Undo the last interaction; returns False when there is nothing to undo."""
        return self.history.undo(self) is not None

    def redo(self) -> bool:
        """Redo the last undone interaction; returns False when there is none."""
        return self.history.redo(self) is not None

    @property
    def can_undo(self) -> bool:
        """True when :meth:`undo` would change something (``history.undo_name`` names it)."""
        return self.history.undo_name is not None

    @property
    def can_redo(self) -> bool:
        """True when :meth:`redo` would change something."""
        return self.history.redo_name is not None

    def history_state(self) -> dict[str, Any]:
        """The small state one undo step keeps (shallow copies; arrays are diffed apart)."""
        return {"prompts": dict(self.prompts), "last": dict(self.last), "bases": dict(self.bases)}

    def restore_history_state(self, state: dict[str, Any]) -> None:
        """Put back what :meth:`history_state` returned."""
        self.prompts, self.last = dict(state["prompts"]), dict(state["last"])
        self.bases = dict(state["bases"])

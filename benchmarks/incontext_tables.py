"""Markdown tables of a ``bench_incontext.py`` result, for docs/incontext.md (prints them).

Usage::

    PYTHONPATH=core python benchmarks/incontext_tables.py benchmarks/results/incontext.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

TITLES = {
    "liver": "liver",
    "aal": "AAL (10)",
    "heldout-subjects": "held-out subjects",
    "heldout-structures": "held-out structures",
    "cross-subject": "cross-subject",
}


def fmt(v) -> str:
    """Three decimals, or a dash."""
    return "-" if v is None else f"{v:.3f}"


def dice_tables(result: dict) -> str:
    """One table per protocol: a row per backend, a column block per group."""
    sizes = "/".join(str(n) for n in result["sizes"])
    out = []
    protocols = sorted({p for per in result["dice"].values() for p in per})
    for protocol in protocols:
        groups = [
            g
            for g in result["groups"]
            if any(g in per.get(protocol, {}) for per in result["dice"].values())
        ]
        head = " | ".join(f"{TITLES[g]}: n = {sizes}" for g in groups)
        out.append(f"\n**{protocol}**\n\n| backend | {head} |")
        out.append("|---" * (len(groups) + 1) + "|")
        for name, per in result["dice"].items():
            rows = per.get(protocol, {})
            if not rows:
                continue
            cells = [" / ".join(fmt(v) for v in rows[g]) if g in rows else "-" for g in groups]
            out.append(f"| `{name}` | " + " | ".join(cells) + " |")
    return "\n".join(out)


def extra_tables(result: dict) -> str:
    """Click curves, paths, speed."""
    out = []
    for name, c in result.get("clicks", {}).items():
        out.append(f"\nclicks, `{name}`, {c['size']} supports (0..5 clicks per query slice):")
        for g, v in c.items():
            if g != "size":
                out.append(f"- {TITLES[g]}: " + " / ".join(fmt(x) for x in v))
    for name, per in result.get("paths", {}).items():
        for protocol, counts in per.items():
            if counts:
                out.append(f"\npaths `{name}` {protocol}: {counts}")
    for name, sp in result.get("speed", {}).items():
        out.append(f"\nspeed `{name}`: {sp['median_s']:.2f} s for {sp['slices']} slices")
    return "\n".join(out)


if __name__ == "__main__":
    res = json.loads(Path(sys.argv[1]).read_text())
    print(dice_tables(res))
    print(extra_tables(res))

"""Where one LiteMedSAM adapter training step spends its time; prints JSON per step.

Forward, loss, backward and optimiser seconds of a box-head step on random cached embeddings
(batch 4, 256x256 frame), per method, then a ``torch.profiler`` table of one step.

    nice -n 10 python benchmarks/bench_adapters_step.py --methods norm-affine decoder
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from fmseg.adapters.api import build_adapted
from fmseg.adapters.bases import AdapterConfig
from fmseg.adapters.trainer import dice_bce_loss


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", nargs="+", default=["norm-affine", "decoder"])
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--profile", action="store_true", help="also print a profiler table")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(json.dumps({"load_avg": os.getloadavg()}))
    for method in args.methods:
        model = build_adapted("litemedsam", AdapterConfig(method=method, head="box")).eval()
        b = args.batch
        batch = {
            "embedding": torch.randn(b, 256, 64, 64),
            "box": torch.tensor([[60.0] * 2 + [160.0] * 2] * b),
        }
        target = (torch.rand(b, 1, 256, 256) > 0.5).float()
        weight = torch.ones_like(target)
        opt = torch.optim.AdamW(model.trainable_parameters(), 1e-3)
        for step in range(args.steps):
            t = [time.perf_counter()]
            logits = model(batch)
            t.append(time.perf_counter())
            loss = dice_bce_loss(logits, target, weight)
            t.append(time.perf_counter())
            opt.zero_grad()
            loss.backward()
            t.append(time.perf_counter())
            opt.step()
            t.append(time.perf_counter())
            parts = ("forward", "loss", "backward", "optimiser")
            row = {k: round(t[i + 1] - t[i], 3) for i, k in enumerate(parts)}
            print(json.dumps({"method": method, "step": step + 1, **row}), flush=True)
        if args.profile:
            with torch.profiler.profile() as prof:
                dice_bce_loss(model(batch), target, weight).backward()
            print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=12))


if __name__ == "__main__":
    main()

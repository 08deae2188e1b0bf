"""``fmseg.batch`` on a multi-process ``LocalCluster``: a killed worker loses no finished case.

Slow (two worker processes start, each importing torch and building its tiny model once).
"""

import json
import os
import signal

import numpy as np
import pytest

from fmseg.batch import Case, JobSpec, read_box_file, read_cohort, run, run_iter
from fmseg.batch.job import job_record, matches
from fmseg.io import save_volume
from fmseg.weights import sha256_of

pytestmark = pytest.mark.slow


def _cohort(tmp_path, n):
    folder = tmp_path / "data"
    folder.mkdir()
    rng = np.random.default_rng(0)
    x, y, z = np.mgrid[:48, :48, :40]
    ball = (x - 24) ** 2 + (y - 24) ** 2 + (z - 20) ** 2 < 15**2
    for i in range(n):
        img = (ball * 100.0 + rng.normal(0, 5, ball.shape)).astype(np.float32)
        save_volume(folder / f"c{i:02d}.nii.gz", img, np.eye(4))
    rows = "".join(f"c{i:02d},20,12,12,36,36,1\n" for i in range(n))
    (tmp_path / "boxes.csv").write_text("case,slice,a0,b0,a1,b1,label\n" + rows)
    return folder, tmp_path / "boxes.csv"


def test_killed_worker_keeps_finished_outputs_and_rerun_does_only_the_rest(tmp_path):
    distributed = pytest.importorskip("distributed")
    folder, boxes = _cohort(tmp_path, n=12)
    out = tmp_path / "out"
    job = JobSpec("boxes", boxes=str(boxes), propagate=True, tiny=True)
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=None)  # fmt: skip
    client = distributed.Client(cluster)
    try:
        pids = client.run(os.getpid)
        assert len(set(pids.values())) == 2 and os.getpid() not in pids.values()
        work = run_iter(folder, job, out, scheduler=client)
        finished = 0
        for step in work:
            finished = step.done
            if finished >= 2:
                os.kill(next(iter(pids.values())), signal.SIGKILL)  # a worker dies mid-run
                break
        work.close()  # the user cancels; unfinished cases are cancelled
        first = {r.case: r for r in _summary(out)}
        done_first = {c for c, r in first.items() if r.status == "done"}
        assert len(done_first) >= 2 and len(done_first) < 12
        rec, prompts = job_record(job), read_box_file(boxes)
        cases = {c.name: Case(c.name, c.image, prompts[c.name]) for c in read_cohort(folder)}
        hashes = {c: sha256_of(out / f"{c}.nii.gz") for c in done_first}
        for c in done_first:  # every finished output is intact and recorded
            assert matches(rec, cases[c], out, job)
            stored = json.loads((out / f"{c}.json").read_text())
            assert stored["outputs"]["labels"]["sha256"] == hashes[c]
        for r in first.values():
            if r.status != "done":
                assert r.error == "cancelled before it finished" or "KilledWorker" in r.error
        # the re-run (same cluster: its nanny restarted the killed worker) does only the rest
        second = run(folder, job, out, scheduler=client)
        status = {r.case: r.status for r in second.results}
        assert {c for c, s in status.items() if s == "skipped"} == done_first
        assert {c for c, s in status.items() if s == "done"} == set(cases) - done_first
        assert all(sha256_of(out / f"{c}.nii.gz") == h for c, h in hashes.items())
    finally:
        client.close()
        cluster.close()


def test_local_cluster_started_by_the_run(tmp_path):
    folder, boxes = _cohort(tmp_path, n=3)
    (folder / "broken.nii.gz").write_bytes(b"\x1f\x8b broken gzip")
    job = JobSpec("boxes", boxes=str(boxes), tiny=True)
    summary = run(folder, job, tmp_path / "out", workers=2)
    status = {r.case: (r.status, r.error) for r in summary.results}
    assert status["broken"][0] == "failed" and "corrupt" in status["broken"][1]
    assert [status[f"c{i:02d}"][0] for i in range(3)] == ["done"] * 3


def _summary(out):
    import csv

    from fmseg.batch.apply import CaseResult

    with open(out / "summary.csv", newline="") as f:
        return [CaseResult(r["case"], r["status"], float(r["seconds"]), r["output"], r["error"])
                for r in csv.DictReader(f)]  # fmt: skip

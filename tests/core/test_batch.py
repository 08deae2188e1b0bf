"""``fmseg.batch`` and ``fmseg batch``: cohorts, provenance, resume, bad cases (fast paths).

Cases run here without Dask (``workers=0``) or on an in-process ``LocalCluster``, with tiny
random-weight models; the multi-process kill test is in ``test_batch_cluster.py`` (slow).
"""

import csv
import json

import nibabel as nib
import numpy as np
import pytest

import fmseg.adapters.api as api
from fmseg import Box, Prompts, Session
from fmseg.batch import JobSpec, read_box_file, read_cohort, run, run_iter
from fmseg.batch import cache as batch_cache
from fmseg.cli import main
from fmseg.incontext import SupportSet, add_slice
from fmseg.progress import drain
from fmseg.registry import load_model


@pytest.fixture(autouse=True)
def _fresh_model_cache():
    batch_cache.clear()  # each test builds its models (tiny ones from the job's seed)
    yield
    batch_cache.clear()


def _ball(seed: int, shape=(32, 32, 10)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x, y, z = np.mgrid[: shape[0], : shape[1], : shape[2]]
    ball = (x - 16) ** 2 + (y - 16) ** 2 + ((z - 5) * 2.0) ** 2 < (7 + seed % 3) ** 2
    return (ball * 100.0 + rng.normal(0, 5, shape)).astype(np.float32), ball.astype(np.uint8)


def make_cohort(folder, n=3, corrupt=False, boxes=True):
    """``n`` NIfTI balls (+ a corrupt ``bad.nii.gz``) and a box CSV for each case."""
    folder.mkdir(exist_ok=True)
    for i in range(n):
        img, _ = _ball(i)
        nib.save(nib.Nifti1Image(img, np.diag([1.0, 1.0, 2.0, 1.0])), folder / f"c{i}.nii.gz")
    names = [f"c{i}" for i in range(n)]
    if corrupt:
        (folder / "bad.nii.gz").write_bytes(b"not a nifti file")
        names.append("bad")
    box_file = folder.parent / "boxes.csv"
    if boxes:
        rows = "".join(f"{c},5,8,8,24,24,1\n" for c in names)
        box_file.write_text("case,slice,a0,b0,a1,b1,label\n" + rows)
    return folder, box_file


def read_summary(path):
    with open(path, newline="") as f:
        return {row["case"]: row for row in csv.DictReader(f)}


def test_cohort_from_glob_folder_and_manifest(tmp_path):
    folder, _ = make_cohort(tmp_path / "data", n=2)
    (folder / "notes.txt").write_text("ignored")
    by_glob = read_cohort(str(folder / "*.nii.gz"))
    by_folder = read_cohort(folder)
    assert [c.name for c in by_glob] == [c.name for c in by_folder] == ["c0", "c1"]
    manifest = tmp_path / "m.csv"
    manifest.write_text("case,image\nfirst,data/c1.nii.gz\n,data/c0.nii.gz\n")
    cases = read_cohort(manifest)
    assert [c.name for c in cases] == ["first", "c0"]
    assert cases[0].image == str(tmp_path / "data" / "c1.nii.gz")
    with pytest.raises(ValueError, match="two cases are named 'c0'"):
        read_cohort([folder / "c0.nii.gz", tmp_path / "other" / "c0.nii.gz"])
    with pytest.raises(ValueError, match="no NIfTI/NRRD volumes in pattern"):
        read_cohort(str(tmp_path / "*.nrrd"))
    (tmp_path / "bad.csv").write_text("path\nx.nii\n")
    with pytest.raises(ValueError, match="'image' column"):
        read_cohort(tmp_path / "bad.csv")


def test_box_file_rows_and_errors(tmp_path):
    f = tmp_path / "b.csv"
    f.write_text("case,slice,a0,b0,a1,b1,label\nx,3,1,2,10,12,\nx,4,1,2,10,12,2\ny,0,0,0,5,5,1\n")
    boxes = read_box_file(f)
    assert [b.label for b in boxes["x"]] == [1, 2] and boxes["y"][0].slice == 0
    b = boxes["x"][0].box()  # a = first remaining axis = row, b = column = x
    assert (b.x0, b.y0, b.x1, b.y1) == (2, 1, 12, 10)
    f.write_text("case,slice,a0,b0,a1,b1\nx,three,1,2,10,12\n")
    with pytest.raises(ValueError, match="line 2: slice, a0"):
        read_box_file(f)
    f.write_text("case,slice,a0,b0\nx,3,1,2\n")
    with pytest.raises(ValueError, match="needs the columns"):
        read_box_file(f)


def test_boxes_job_provenance_resume_and_bad_case(tmp_path):
    folder, box_file = make_cohort(tmp_path / "data", n=3, corrupt=True)
    out = tmp_path / "out"
    job = JobSpec("boxes", boxes=str(box_file), propagate=True, tiny=True)
    summary = run(folder, job, out, workers=0)
    rows = read_summary(out / "summary.csv")
    assert summary.counts() == {"done": 3, "skipped": 0, "failed": 1}
    assert rows["bad"]["status"] == "failed"
    assert rows["bad"]["error"] == (
        f"cannot read image '{folder / 'bad.nii.gz'}': the file is corrupt or not a NIfTI/NRRD file"
    )
    for c in ("c0", "c1", "c2"):
        seg = nib.load(out / f"{c}.nii.gz")
        assert seg.shape == (32, 32, 10) and np.allclose(seg.affine, np.diag([1, 1, 2.0, 1]))
        assert seg.get_fdata()[:, :, 5].any()  # the boxed slice holds the object
        prov = json.loads((out / f"{c}.json").read_text())
        assert prov["prompts"] == [{"slice": 5, "box": [8.0, 8.0, 24.0, 24.0], "label": 1}]
        assert prov["settings"]["propagate"] is True and prov["fmseg"]
        assert prov["weights_sha256"] == {"litemedsam": "tiny random weights"}
        assert prov["window"]["policy"]["mode"] == "percentiles"
        assert len(prov["image_sha256"]) == 64 and rows[c]["status"] == "done"
    assert not (out / "bad.json").exists()
    # the same as a session on the same model, prompts and propagation
    session = Session(_ball(1)[0], batch_cache.models_for(job).box, spacing=(1.0, 1.0, 2.0))
    session.set_prompts(2, 5, Prompts(box=Box(8, 8, 24, 24)))
    drain(session.propagate_iter(2, 5))
    session.commit(1)
    assert np.array_equal(nib.load(out / "c1.nii.gz").get_fdata(), session.labels)

    # re-run: every finished case is skipped; only the bad one is tried again
    again = run(folder, job, out, workers=0)
    assert [r.status for r in again.results] == ["failed", "skipped", "skipped", "skipped"]

    # a changed prompt, a damaged output and a changed window each redo exactly their case
    box_file.write_text(box_file.read_text().replace("c1,5,8,8,24,24,1", "c1,5,9,9,24,24,1"))
    (out / "c2.nii.gz").write_bytes(b"truncated")
    third = {r.case: r.status for r in run(folder, job, out, workers=0).results}
    assert third == {"bad": "failed", "c0": "skipped", "c1": "done", "c2": "done"}
    windowed = JobSpec("boxes", boxes=str(box_file), propagate=True, tiny=True, window=(0, 90))
    assert run(folder, windowed, out, workers=0).counts()["done"] == 3


def test_box_off_the_image_and_missing_box_are_case_errors(tmp_path):
    folder, box_file = make_cohort(tmp_path / "data", n=2)
    box_file.write_text("case,slice,a0,b0,a1,b1\nc0,5,50,50,60,60\n")
    summary = run(
        folder, JobSpec("boxes", boxes=str(box_file), tiny=True), tmp_path / "o", workers=0
    )
    errors = {r.case: r.error for r in summary.results}
    assert errors["c0"].startswith("box 50 50 60 60 does not fit slice 5 along axis 2")
    assert errors["c1"] == "no box for case 'c1' in the box file"


def test_bad_job_refused_before_anything_runs(tmp_path):
    folder, _ = make_cohort(tmp_path / "data", n=1, boxes=False)
    with pytest.raises(ValueError, match="a 'boxes' job needs --boxes"):
        run(folder, JobSpec("boxes"), tmp_path / "o", workers=0)
    with pytest.raises(ValueError, match="cannot read support '.*nope.npz': file not found"):
        run(folder, JobSpec("incontext", support=str(tmp_path / "nope.npz")), tmp_path / "o")
    with pytest.raises(ValueError, match="folder '.*missing' does not exist"):
        run(folder, JobSpec("boxes", boxes=__file__), tmp_path / "missing" / "o")
    assert not (tmp_path / "o").exists()


def _support(tmp_path):
    img, lab = _ball(7)
    s = SupportSet()
    for i in (3, 5, 7):
        add_slice(s, img, lab, 2, i)
    return str(s.save(tmp_path / "support.npz"))


def test_incontext_and_uncertainty_jobs(tmp_path):
    folder, _ = make_cohort(tmp_path / "data", n=2, boxes=False)
    support = _support(tmp_path)
    job = JobSpec("incontext", support=support, backend="incontext-small", tiny=True)
    assert run(folder, job, tmp_path / "ic", workers=0).counts()["done"] == 2
    prov = json.loads((tmp_path / "ic" / "c0.json").read_text())
    assert len(prov["support_sha256"]) == 64
    assert prov["weights_sha256"] == {"incontext-small": "tiny random weights"}
    job = JobSpec("uncertainty", support=support, k=3, tiny=True)
    summary = run(folder, job, tmp_path / "u", workers=0)
    assert summary.counts()["done"] == 2
    total = nib.load(tmp_path / "u" / "c1_total.nii.gz").get_fdata()
    assert total.shape == (32, 32, 10) and 0 <= total.min() and total.max() <= 1
    assert summary.results[0].output.endswith("c0_mean.nii.gz")


def test_adapter_job(tmp_path, monkeypatch):
    monkeypatch.setattr(api, "load_model", lambda n, checkpoint=None, tiny=False, device=None:
                        load_model(n, tiny=True, device=device))  # fmt: skip
    monkeypatch.setattr(api, "base_fingerprint", lambda *a, **k: "tiny-random")
    img, lab = _ball(1)
    nib.save(nib.Nifti1Image(img, np.eye(4)), tmp_path / "img.nii.gz")
    nib.save(nib.Nifti1Image(lab, np.eye(4)), tmp_path / "lab.nii.gz")
    adapter = tmp_path / "a.pt"
    train = ["adapt", "--train", f"{tmp_path / 'img.nii.gz'}:{tmp_path / 'lab.nii.gz'}:3,5"]
    train += ["--label", "1", "--axis", "2", "--method", "linear-probe", "--steps", "2"]
    assert main([*train, "--out", str(adapter)]) == 0
    folder, _ = make_cohort(tmp_path / "data", n=2, boxes=False)
    summary = run(folder, JobSpec("adapter", adapter=str(adapter), tiny=True), tmp_path / "o",
                  workers=0)  # fmt: skip
    assert summary.counts()["done"] == 2
    prov = json.loads((tmp_path / "o" / "c0.json").read_text())
    assert len(prov["adapter_sha256"]) == 64 and prov["window"]["resolved"][1] > 0


def test_in_process_cluster_loads_the_model_once_per_worker(tmp_path):
    folder, box_file = make_cohort(tmp_path / "data", n=4)
    batch_cache.clear()
    before = batch_cache.loads()
    job = JobSpec("boxes", boxes=str(box_file), tiny=True)
    work = run_iter(folder, job, tmp_path / "o", workers=2, processes=False)
    steps = []
    while True:
        try:
            steps.append(next(work))
        except StopIteration as stop:
            summary = stop.value
            break
    assert summary.counts()["done"] == 4
    assert batch_cache.loads() - before == 2  # 4 cases, 2 single-threaded workers
    finished = [s for s in steps if s.done > 0]
    assert [s.done for s in finished] == [1, 2, 3, 4] and all(s.total == 4 for s in finished)


def test_cli_batch(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(batch_cache, "load_model", batch_cache.load_tiny)
    folder, box_file = make_cohort(tmp_path / "data", n=2, corrupt=True)
    out = tmp_path / "out"
    args = ["batch", str(folder / "*.nii.gz"), "--job", "boxes", "--boxes", str(box_file)]
    assert main([*args, "--out", str(out), "--workers", "0"]) == 2
    err = capsys.readouterr().err
    assert "3 cases: 2 done, 0 skipped, 1 failed" in err
    assert "fmseg: error: 1 of 3 cases failed (first: bad: cannot read image" in err
    assert read_summary(out / "summary.csv")["c1"]["status"] == "done"
    (folder / "bad.nii.gz").unlink()
    assert main([*args, "--out", str(out), "--workers", "0"]) == 0
    assert "2 cases: 0 done, 2 skipped, 0 failed" in capsys.readouterr().err
    assert main(["batch", str(folder), "--job", "incontext", "--out", str(out)]) == 2
    assert "fmseg: error: a 'incontext' job needs --support" in capsys.readouterr().err

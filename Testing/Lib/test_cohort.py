"""``medxai cohort`` on a real local Ray cluster: nothing lost, nothing done twice, the same bytes from 1 or 2 workers.

The cluster is started by this module (2 CPUs, a 200 MB object store, no dashboard, on 127.0.0.1) and
stopped at its end. The cases are small CT phantoms (MedXAILib.demo.samples.ct_phantom) segmented by the
shipped, trained phantom segmenter, with their true labels as reference segmentations, plus one
unreadable image. One worker process is killed (SIGKILL) while it runs a case: Ray replaces it, the case
is retried, and every case ends complete exactly once with nothing half-written. The command itself, with
its default embedded Ray instance, is stopped by Ctrl-C and keeps the cases it completed.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from MedXAILib.allocator import is_glibc
from MedXAILib.analysis.qa import aurc, dice, risk_coverage, structure_scores
from MedXAILib.cohort import case_complete, case_folder, case_request, read_manifest, run_cohort
from MedXAILib.cohort.plan import CohortOptions
from MedXAILib.errors import InputError
from MedXAILib.io.outputs import Output, OutputSet

from conftest import DEFAULT_SIGINT, ROOT

MODEL = ROOT / "Resources" / "Models" / "phantom_segmenter.json"
GOOD = ("c0", "c1", "c2")
STRUCTURES = "liver,lesion"
FAST = {"tta": ["identity", "shift_k"]}  # a two-member ensemble keeps the cases short
#: What chooses a process's allocator besides MEDXAI_ALLOCATOR (the user's own settings would win over it).
ALLOCATOR_CHOSEN = ("MEDXAI_ALLOCATOR", "GLIBC_TUNABLES", "LD_PRELOAD")


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    from MedXAILib.demo.samples import ct_phantom
    from MedXAILib.io import write_image

    folder = tmp_path_factory.mktemp("cohort_inputs")
    lines = ["case_id,image,reference,site"]
    for index, case in enumerate(GOOD):
        image, labels, _ = ct_phantom(1_000_000 + index, shape=(48, 48, 32))
        write_image(image, folder / f"{case}.nrrd")
        write_image(image.with_array(labels[np.newaxis].astype(np.float32)), folder / f"{case}_ref.nrrd")
        lines.append(f"{case},{case}.nrrd,{case}_ref.nrrd,site{index % 2}")
    (folder / "broken.nrrd").write_text("not an image")
    lines.append("broken,broken.nrrd,,site0")
    path = folder / "manifest.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def ray_cluster():
    """A real local Ray cluster of 2 CPUs on the loopback address, stopped at the end."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # before ray's first import: 127.0.0.1
    ray = pytest.importorskip("ray", reason="the cohort extra (pip install -e '.[cohort]') brings Ray")
    context = ray.init(num_cpus=2, object_store_memory=200 * 1024 * 1024, include_dashboard=False,
                       log_to_driver=False, configure_logging=False, namespace="medxai-test")
    try:
        assert context.address_info["node_ip_address"] == "127.0.0.1"
        yield context.address_info["address"]
    finally:
        ray.shutdown()
    assert not ray.is_initialized()


def _digests(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _staging_left(out: Path) -> list[str]:
    return [p.name for p in (out / "cases").iterdir() if p.name.startswith(".")]


@pytest.mark.slow
def test_a_killed_worker_is_replaced_its_case_retried_and_results_repeat_byte_for_byte(manifest, ray_cluster,
                                                                                       tmp_path, monkeypatch):
    """Two workers, one killed mid-case; then the command joins the cluster with one worker: same bytes.
    The command's workers keep freed buffers as its MEDXAI_ALLOCATOR asks; the first run's do not."""
    monkeypatch.delenv("MEDXAI_ALLOCATOR", raising=False)
    killed: dict = {}

    def kill_the_first_worker(event):  # SIGKILL one worker process 0.5 s into its first case (of seconds)
        if event["event"] == "started" and not killed and event["case"] in GOOD:
            killed.update(case=event["case"], pid=event["worker"])
            threading.Timer(0.5, os.kill, (event["worker"], signal.SIGKILL)).start()

    first = run_cohort(manifest, MODEL, tmp_path / "two", structures=STRUCTURES, workers=2, ray=ray_cluster,
                       on_event=kill_the_first_worker, qa=FAST)
    events = "\n".join(json.dumps(e) for e in first.events)
    assert first.failed == ["broken"] and sorted(first.done) == sorted(GOOD), events
    retried = [e for e in first.events if e["event"] == "retried"]
    assert retried and retried[0]["dead_worker"] == killed["pid"] and retried[0]["worker"] != killed["pid"], events
    finished = [e["case"] for e in first.events if e["event"] in ("done", "skipped")]
    assert sorted(finished) == sorted(GOOD), "every case completes exactly once"
    assert {e["allocator"] for e in first.events if e["event"] == "done"} == {"system"}, events
    out = tmp_path / "two"
    assert not _staging_left(out), "nothing half-written is left behind"
    for case in read_manifest(manifest):
        folder = case_folder(out, case.case_id)
        assert folder.is_dir() == (case.case_id in GOOD)
    broken = [i for i, c in enumerate(first.table["case_id"]) if c == "broken"]
    assert len(broken) == 1 and "cannot read" in first.table["error"][broken[0]]
    assert len(first.table["case_id"]) == 1 + 2 * len(GOOD)  # one row per case x structure, one per failure
    assert set(first.table["site"]) == {"site0", "site1"}
    dices = [d for d in first.table["dice"] if np.isfinite(d)]
    assert len(dices) == 2 * len(GOOD) and all(0 <= d <= 1 for d in dices)
    for name in ("table.csv", "table.parquet", "report.html", "log.jsonl"):
        assert (out / name).is_file(), name
    import pyarrow.parquet as pq

    assert pq.read_table(out / "table.parquet").num_rows == len(first.table["case_id"])

    # the command, joining the running cluster with one worker: the same bytes, exit code 3 for the failed case
    args = [sys.executable, "-m", "MedXAILib", "cohort", str(manifest), "--model", str(MODEL), "--out",
            str(tmp_path / "one"), "--structures", STRUCTURES, "--tta", ",".join(FAST["tta"]), "--workers", "1",
            "--ray", ray_cluster, "--progress-json"]
    keep = {**{k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k not in ALLOCATOR_CHOSEN},
            "MEDXAI_ALLOCATOR": "keep"}
    done = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=300, env=keep, **DEFAULT_SIGINT)
    assert done.returncode == 3, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert records[-1]["done"] is True and "1 of 4 cases failed" in records[-1]["warnings"][0]
    assert len({r["worker"] for r in records if r.get("event") == "done"}) == 1
    if is_glibc():  # the choice reached the Ray actor, a process the command did not start
        assert {r["allocator"] for r in records if r.get("event") in ("done", "failed")} == {"keep"}, done.stdout
    for case in GOOD:
        assert _digests(case_folder(out, case)) == _digests(case_folder(tmp_path / "one", case)), case


def test_a_re_run_skips_complete_cases_and_redoes_a_damaged_one(manifest, tmp_path, monkeypatch):
    import MedXAILib.model as model_package
    from MedXAILib.runs import clear_model_cache

    real, loads = model_package.load_model, []
    monkeypatch.setattr(model_package, "load_model",
                        lambda *args, **kwargs: loads.append(args) or real(*args, **kwargs))
    clear_model_cache()
    out = tmp_path / "out"
    first = run_cohort(manifest, MODEL, out, structures="lesion", ray="off", qa=FAST)
    assert sorted(first.done) == sorted(GOOD) and first.failed == ["broken"]
    assert len(loads) == 1  # in this process the driver's check and the cases share one load of the model
    before = {case: _digests(case_folder(out, case)) for case in GOOD}
    again = run_cohort(manifest, MODEL, out, structures="lesion", ray="off", qa=FAST)
    assert sorted(again.skipped) == sorted(GOOD) and not again.done
    with open(case_folder(out, "c1") / "entropy.nrrd", "ab") as stream:  # damaged after the fact
        stream.write(b"\0")
    assert not case_complete(case_folder(out, "c1"))
    third = run_cohort(manifest, MODEL, out, structures="lesion", ray="off", qa=FAST)
    assert third.done == ["c1"] and sorted(third.skipped) == ["c0", "c2"]
    assert _digests(case_folder(out, "c1")) == before["c1"]
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [e["event"] for e in log].count("run") == 3
    from MedXAILib.analysis.qa import QAOptions

    case = read_manifest(manifest)[0]
    planned = dict(model_path=str(MODEL.resolve()), structures="lesion", qa=QAOptions(tta=("identity", "shift_k")).to_json())
    found = case_folder(out, case.case_id)
    from MedXAILib.model import load_model

    planned["model_sha256"] = load_model(MODEL).sha256
    assert case_complete(found, case_request(case, CohortOptions(**planned)))
    for change in ({"structures": "liver"}, {"seed": 1}, {"model_sha256": "retrained"}):
        assert not case_complete(found, case_request(case, CohortOptions(**{**planned, **change}))), change


@pytest.mark.slow
def test_the_command_starts_its_own_ray_and_ctrl_c_keeps_the_completed_cases(manifest, tmp_path):
    out = tmp_path / "out"
    args = [sys.executable, "-m", "MedXAILib", "cohort", str(manifest), "--model", str(MODEL), "--out", str(out),
            "--structures", "lesion", "--workers", "1", "--tta", "identity,shift_k", "--progress-json"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env,
                               **DEFAULT_SIGINT)
    completed = None
    for line in process.stdout:
        record = json.loads(line)
        if record.get("event") == "done":
            completed = record["case"]
            break
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert completed is not None, err
    assert process.returncode == 130, err
    assert "cancelled" in err and "kept" in err and "Traceback" not in err
    assert case_complete(case_folder(out, completed))
    assert not _staging_left(out)
    assert not (out / "table.csv").exists(), "the table is written only by a run that finishes"


# ------------------------------------------------------------------------------------------------
# The parts, without Ray


def test_ray_missing_says_how_to_install_it(manifest, tmp_path):
    code = ("import sys; sys.modules['ray'] = None; from MedXAILib.cli.main import main; "
            f"sys.exit(main(['cohort', {str(manifest)!r}, '--model', {str(MODEL)!r}, '--out', {str(tmp_path / 'o')!r}]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "pip install 'slicer-medxai[cohort]'" in done.stderr and done.stderr.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_manifest_columns_paths_and_errors(tmp_path):
    (tmp_path / "a.nrrd").write_text("x")
    (tmp_path / "manifest.csv").write_text("image_ct,image_pet,reference,scanner\na.nrrd,/abs/p.nrrd,,S1\n")
    (case,) = read_manifest(tmp_path / "manifest.csv")
    assert case.case_id == "a" and case.image_files == (str(tmp_path / "a.nrrd"), "/abs/p.nrrd")
    assert case.reference is None and case.metadata == {"scanner": "S1"}
    for text, fragment in [("case_id,image\nx,a.nrrd\nx,b.nrrd\n", "unique"),
                           ("case_id,image\n../up,a.nrrd\n", "letters, digits"),
                           ("case_id,path\nx,a.nrrd\n", "no image column"),
                           ("image\na.nrrd,extra\n", "2 values for 1 columns"),
                           ("image\n", "lists no case")]:
        (tmp_path / "bad.csv").write_text(text)
        with pytest.raises(InputError, match=fragment):
            read_manifest(tmp_path / "bad.csv")
    folder = tmp_path / "images"
    folder.mkdir()
    for name in ("b.nii.gz", "a.nrrd", "labels.seg.nrrd", "notes.txt"):
        (folder / name).write_text("x")
    assert [c.case_id for c in read_manifest(folder)] == ["a", "b"]


def test_case_seeds_depend_on_the_case_only(manifest):
    options = CohortOptions(model_path=str(MODEL), seed=7)
    cases = read_manifest(manifest)
    seeds = [case_request(c, options).seed for c in cases]
    assert seeds == [case_request(c, options).seed for c in reversed(cases)][::-1]
    assert len(set(seeds)) == len(seeds)


def test_a_case_folder_is_committed_whole_and_replaces_an_earlier_one(tmp_path):
    out = tmp_path / "out"
    (out / "cases" / "c").mkdir(parents=True)
    (out / "cases" / "c" / "old.txt").write_text("earlier attempt")
    image = tmp_path / "ct.nrrd"
    image.write_text("x")
    guard = OutputSet([Output("--out", out, folder=True)], [("--image", image)])
    part = guard.part(out / "cases" / "c")
    staged = part.staged(out / "cases" / "c")
    (staged / "new.txt").write_text("complete")
    assert (out / "cases" / "c" / "old.txt").exists()  # nothing visible before the commit
    part.commit()
    assert sorted(p.name for p in (out / "cases" / "c").iterdir()) == ["new.txt"]
    assert sorted(p.name for p in (out / "cases").iterdir()) == ["c"]
    with pytest.raises(InputError, match="no output folder"):
        guard.part(tmp_path / "elsewhere")
    inside = out / "cases" / "d" / "ct.nrrd"
    inside.parent.mkdir()
    inside.write_text("a user's input")
    with pytest.raises(InputError, match="never overwrites its inputs"):
        guard.part(out / "cases" / "d", [("manifest image", inside)])


def test_risk_coverage_and_aurc():
    risks = [0.0, 0.1, 0.9, 0.5]
    coverage, selective = risk_coverage([0.2, 0.1, 0.9, 0.4], risks)  # accepted: 0.1, 0.0, 0.5, 0.9
    np.testing.assert_allclose(coverage, [0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(selective, [0.1, 0.05, 0.2, 0.375])
    assert aurc([0.2, 0.1, 0.9, 0.4], risks) == pytest.approx(np.mean([0.1, 0.05, 0.2, 0.375]))
    assert aurc(risks, risks) < aurc([1, 1, 1, 1], risks) == pytest.approx(np.mean(risks))  # ties: random level
    assert aurc([np.nan, 0, 0, 0], [1.0, 0, 0, 0]) == pytest.approx(aurc([1, 0, 0, 0], [1.0, 0, 0, 0]))


def test_structure_scores_on_known_maps():
    shape = (20, 20, 20)
    structure = np.zeros(shape, bool)
    structure[5:10, 5:10, 5:10] = True
    relevance = np.zeros(shape)
    relevance[7, 7, 7] = 1.0  # inside the structure
    relevance[19, 19, 19] = 1.0  # far outside it
    members = np.stack([structure, structure]).astype(np.uint8)
    mean = np.stack([1.0 - structure, structure.astype(float)])
    scores = structure_scores(relevance, structure, members, 1, mean, mean ** 2, np.zeros(shape), np.random.default_rng(
        0).normal(size=(1, *shape)), (1.0, 1.0, 1.0), score=10.0, near_mm=3.0, band_mm=1.0)
    assert scores["xai_outside"] == pytest.approx(0.5)
    assert scores["xai_boundary"] == pytest.approx(1.0)  # the inside voxel lies deeper than 1 mm
    assert scores["tta_dice"] == 0.0 and scores["tta_variance"] == 0.0
    assert dice(np.zeros(3, bool), np.zeros(3, bool)) == 1.0

"""``medxai view`` in a real browser: a server process on a free local port, headless Chromium, pixels.

On the demo's folder (the session's ``small_demo``):

- the first image arrives within the start-up target (10 s of server CPU time; the wall-clock time is
  printed), and the axial, sagittal and coronal views pass through the lesion and show it red, under a
  diverging legend, with the per-structure table and the provenance beside them; the README's screenshot is
  this page (``MEDXAI_README_SCREENSHOT=1`` writes docs/images/web-viewer.png);
- every control changes what it should: threshold, window, opacity, symmetric window, colour map, outlines,
  the attribution switch (picture, table and provenance), a slice slider and the focus button, the tabs and
  the file links.

On a cohort folder built from it (two cases, one with a cut-short attribution and a file that is no image,
and a table row whose case folder is missing):

- the QA list is ranked least trustworthy first and each row opens its case; damaged and missing files are
  errors on the page while the server keeps answering;
- only files under the folder are served (``..``, encoded ``..``, absolute paths, symbolic links out);
- closing the last page releases the scene (no node left) and opening one loads it again.
"""

from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pytest
from viewer_testing import (ROOT, choose, difference, http_get, ras_to_view_pixel, running_viewer, save_screenshot,
                            slider_keys, view_image, wait_for_change, wait_for_image, wait_until)

pytestmark = [pytest.mark.slow, pytest.mark.mrml]

FIRST = "Integrated Gradients · lesion_classifier_petct · lesion"
SEGMENTER_CAM = "Grad-CAM · phantom_segmenter · lesion (component)"
START_UP_TARGET_S = 10.0
VIEWPORT = {"width": 1400, "height": 900}


def _reddish(patch: np.ndarray) -> bool:
    r, g, b = (float(np.median(patch[..., c])) for c in range(3))
    return r > 90 and r > 1.35 * g and r > 1.35 * b


def _texts(page, selector: str) -> list[str]:
    return [t.strip() for t in page.locator(selector).all_inner_texts()]


# ------------------------------------------------------------------------------------------------
# The demo's folder


@pytest.fixture(scope="module")
def demo_viewer(small_demo, tmp_path_factory):
    pytest.importorskip("trame_slicer", reason="the viewer tests need the viewer extra (pip install -e '.[viewer]')")
    with running_viewer(small_demo, tmp_path_factory.mktemp("viewer") / "demo-server.log") as viewer:
        yield viewer


@pytest.fixture(scope="module")
def demo_page(browser, demo_viewer):
    page = browser.new_page(viewport=VIEWPORT)
    page.goto(demo_viewer.url)
    wait_for_image(page, "Red")
    page.medxai_first_image = (time.monotonic() - demo_viewer.started, demo_viewer.cpu_seconds())
    yield page
    page.close()


def test_first_image_shows_the_lesion_red_in_every_slice_view(demo_page, demo_viewer, small_demo, tmp_path):
    page = demo_page
    wall, cpu = page.medxai_first_image
    print(f"\nmedxai view: first image {wall:.1f} s after start (wall clock), server CPU {cpu:.1f} s")
    assert cpu < START_UP_TARGET_S, f"start-up and first image took {cpu:.1f} s of CPU (target {START_UP_TARGET_S} s)"

    lesion = json.loads((small_demo / "summary.json").read_text())["lesion"]["centre_ras"]
    status = demo_viewer.status()
    assert status["pages"] >= 1 and status["loaded"] and status["nodes"] > 0 and status["problems"] == []
    for tag in ("Red", "Yellow", "Green"):
        wait_for_image(page, tag)
        image = view_image(page, tag)
        col, row, off_slice = ras_to_view_pixel(status, tag, lesion, image)
        assert off_slice < 3.0, f"the {tag} slice is {off_slice:.1f} mm from the lesion centre"
        patch = image[row - 3:row + 4, col - 3:col + 4]
        assert _reddish(patch), f"{tag} view at the lesion: median RGB {np.median(patch, axis=(0, 1))}, not red"
        # and the image is not red all over: 30 mm away, left of the lesion, there is no hot spot
        far = image[row - 3:row + 4, max(0, col - 45):max(7, col - 38)]
        assert not _reddish(far), f"{tag} view is red away from the lesion too"

    assert page.locator("#legend").is_visible() and page.locator("#legend-label").inner_text().strip() == FIRST
    assert page.locator("#legend .text-caption.font-weight-bold").inner_text().strip() == "MedXAI Diverging"
    lo, hi = float(page.locator("#legend-lo").inner_text()), float(page.locator("#legend-hi").inner_text())
    assert lo < 0 < hi and lo == pytest.approx(-hi, rel=1e-2)
    stats = page.locator("#stats-table")
    headers = _texts(page, "#stats-table thead th")
    lesion_row = stats.locator("tbody tr").filter(has_text="lesion").first.locator("td").all_inner_texts()
    assert headers[0] == "structure" and "density_ratio" in headers
    assert float(lesion_row[headers.index("density_ratio")]) > 5.0  # the map's mass sits in the lesion
    assert page.get_by_role("option", name=FIRST).count() == 0  # the select is closed
    save_screenshot(page, tmp_path / "web-viewer.png", ROOT / "docs" / "images" / "web-viewer.png")


def test_every_control_changes_what_it_should(demo_page, demo_viewer):
    page = demo_page
    before = view_image(page, "Red")
    slider_keys(page, "threshold-slider", "End")  # hide all but the top 0.1 % of |a|
    after = wait_for_change(page, "Red", before, "the threshold")
    assert page.locator("#legend-threshold").is_visible()
    slider_keys(page, "threshold-slider", "Home")  # show everything
    after_all = wait_for_change(page, "Red", after, "the threshold back to 0")
    assert not page.locator("#legend-threshold").is_visible()

    hi = page.locator("#legend-hi").inner_text()
    slider_keys(page, "window-slider", "Home")  # the window ends at the 90th percentile: more saturates
    wait_until(lambda: page.locator("#legend-hi").inner_text() != hi, "the window did not change the legend")
    windowed = wait_for_change(page, "Red", after_all, "the window")

    slider_keys(page, "opacity-slider", "Home")  # opacity 0: the image alone
    plain = wait_for_change(page, "Red", windowed, "the opacity")
    slider_keys(page, "opacity-slider", "End")
    opaque = wait_for_change(page, "Red", plain, "the opacity back up")
    assert difference(opaque, plain) > 2.0

    lo = page.locator("#legend-lo").inner_text()
    page.get_by_label("Symmetric window around 0").click()
    wait_until(lambda: page.locator("#legend-lo").inner_text() != lo, "the symmetric switch did not change the window")
    assert page.locator("#window-slider").count() == 0  # the window percentile applies to symmetric windows only
    asymmetric = wait_for_change(page, "Red", opaque, "the symmetric switch")
    page.get_by_label("Symmetric window around 0").click()
    symmetric = wait_for_change(page, "Red", asymmetric, "the symmetric switch back")

    choose(page, "colormap-select", "sequential")
    wait_until(lambda: page.locator("#legend .font-weight-bold").inner_text().strip() == "MedXAI Sequential",
               "the colour map did not change the legend")
    sequential = wait_for_change(page, "Red", symmetric, "the colour map")
    choose(page, "colormap-select", "diverging")
    diverging = wait_for_change(page, "Red", sequential, "the colour map back")

    page.get_by_label("Segment outlines").click()
    no_outlines = wait_for_change(page, "Red", diverging, "the outline switch")
    page.get_by_label("Segment outlines").click()
    outlines = wait_for_change(page, "Red", no_outlines, "the outline switch back")

    page.locator("#tab-provenance").click()
    wait_until(lambda: "integrated_gradients" in page.locator("#provenance-table").inner_text(),
               "the provenance tab does not show the method")
    choose(page, "attribution-select", SEGMENTER_CAM)
    switched = wait_for_change(page, "Red", outlines, "the attribution switch")
    wait_until(lambda: page.locator("#legend-label").inner_text().strip() == SEGMENTER_CAM,
               "the legend did not follow the attribution")
    wait_until(lambda: "grad_cam" in page.locator("#provenance-table").inner_text()
               and "phantom_segmenter" in page.locator("#provenance-table").inner_text(),
               "the provenance did not follow the attribution")
    page.locator("#tab-stats").click()
    assert page.locator("#stats-table").is_visible()
    assert demo_viewer.status()["attribution"] == 4  # the demo's order: the classifier's three maps, then the segmenter's

    red_slider = page.locator('[data-slider="Red"] [role=slider]').first
    red_slider.focus()
    for _ in range(6):
        red_slider.press("PageUp")
    moved = wait_for_change(page, "Red", switched, "the Red view's slice slider")
    page.locator("#focus-button").click()
    back = wait_for_change(page, "Red", moved, "the focus button")
    assert difference(back, switched) < difference(moved, switched)

    links = {a.inner_text().strip(): a.get_attribute("href") for a in page.locator("a[href^='files/']").all()}
    assert set(links) == {"report.html", "scene.mrb", "summary.json"}
    code, headers, body = http_get(demo_viewer.url, "/" + links["summary.json"])
    assert code == 200 and json.loads(body)["lesion"]["radius_mm"] > 0
    code, headers, body = http_get(demo_viewer.url, "/" + links["report.html"])
    assert code == 200 and headers.get("content-security-policy") == "sandbox" and b"<html" in body.lower()


# ------------------------------------------------------------------------------------------------
# A cohort folder with damaged and missing parts


@pytest.fixture(scope="module")
def cohort(small_demo, tmp_path_factory):
    """Laid out as ``medxai cohort`` writes it: ``table.csv`` (case_id, status, structure, risk, error) and
    ``cases/<id>/``. Case A has no image file, as a cohort case: its image is the background of its
    ``scene.mrb``. Case B has its image file, a cut-short attribution and a file that is no image. Case C
    failed and has no folder."""
    root = tmp_path_factory.mktemp("cohort") / "cohort"
    keep = ("segmentation.seg.nrrd", "attribution_classifier_integrated_gradients.nrrd",
            "attribution_classifier_saliency.nrrd")
    for case, extra in (("A", "scene.mrb"), ("B", "image.nrrd")):
        (root / "cases" / case).mkdir(parents=True)
        for name in (*keep, extra):
            shutil.copyfile(small_demo / name, root / "cases" / case / name)
    cut = root / "cases" / "B" / "attribution_classifier_integrated_gradients.nrrd"
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])  # header intact, voxels cut short
    (root / "cases" / "B" / "attribution_junk.nrrd").write_bytes(b"this is not an image\n")
    (root / "table.csv").write_text("case_id,status,structure,risk,error\nA,done,lesion,0.3,\nB,done,lesion,0.8,\n"
                                    "C,failed,,,the image cannot be read\nA,done,liver,0.1,\n")
    secret = root.parent / "cohort-secret"
    secret.mkdir()
    (secret / "secret.txt").write_text("not for the viewer\n")
    (root / "cases" / "A" / "link-out.txt").symlink_to(secret / "secret.txt")
    (root / "link-dir").symlink_to(secret, target_is_directory=True)
    return root


@pytest.fixture(scope="module")
def cohort_viewer(cohort, tmp_path_factory):
    pytest.importorskip("trame_slicer", reason="the viewer tests need the viewer extra (pip install -e '.[viewer]')")
    with running_viewer(cohort, tmp_path_factory.mktemp("viewer") / "cohort-server.log") as viewer:
        yield viewer


def _open(browser, viewer):
    page = browser.new_page(viewport=VIEWPORT)
    page.goto(viewer.url)
    wait_for_image(page, "Red")
    return page


def test_cohort_list_is_ranked_and_each_row_opens_its_case_despite_damaged_files(browser, cohort_viewer):
    page = _open(browser, cohort_viewer)
    try:
        rows = page.locator("#cohort-table tbody tr")
        # the failed case without a risk first (it needs a look), then by risk, highest first
        assert [rows.nth(i).get_attribute("data-case") for i in range(rows.count())] == ["C", "B", "A", "A"]
        assert page.locator("#case-chip").inner_text().strip() == "case B"  # the first case that can be opened
        problems = " ".join(_texts(page, "#problems .problem"))
        assert "attribution_junk.nrrd: cannot be read" in problems
        assert "attribution_classifier_integrated_gradients.nrrd" in problems  # cut short: fails when shown
        assert "cases/" in problems and "(C)" in problems
        assert "the image cannot be read" in rows.nth(0).inner_text()
        b = view_image(page, "Red")

        rows.nth(2).click()  # case A, the lesion row; its image comes from its scene.mrb
        wait_until(lambda: page.locator("#case-chip").inner_text().strip() == "case A", "row A did not open case A")
        a = wait_for_change(page, "Red", b, "opening case A")
        assert not any("integrated_gradients" in p or "no image" in p for p in _texts(page, "#problems .problem"))
        assert cohort_viewer.status()["nodes"] > 0

        rows.nth(0).click()  # case C: no folder; the page says so and the server goes on
        wait_until(lambda: "case C: its folder is missing" in " ".join(_texts(page, "#problems .problem")),
                   "the missing case is not reported")
        assert cohort_viewer.status()["case"] == "A"

        rows.nth(1).click()  # back to B, whose first attribution cannot be read
        wait_until(lambda: page.locator("#case-chip").inner_text().strip() == "case B", "row B did not open case B")
        choose(page, "attribution-select", "Saliency (gradient) · lesion_classifier_petct · lesion")
        wait_for_change(page, "Red", a, "showing case B's readable attribution")
        status = cohort_viewer.status()
        assert status["case"] == "B" and cohort_viewer.process.poll() is None
        assert any("cut short" in p or "cannot read" in p or "integrated_gradients" in p for p in status["problems"])
    finally:
        page.close()


def test_only_files_under_the_folder_are_served(cohort_viewer, cohort):
    code, _, body = http_get(cohort_viewer.url, "/files/table.csv")
    assert code == 200 and body.startswith(b"case_id,status")
    code, _, body = http_get(cohort_viewer.url, "/files/cases/B/image.nrrd")
    assert code == 200 and body.startswith(b"NRRD")
    for path in ("/files/../cohort-secret/secret.txt", "/files/%2e%2e/cohort-secret/secret.txt",
                 "/files/..%2fcohort-secret%2fsecret.txt", "/files/%2E%2E%2F%2E%2E%2Fetc%2Fpasswd",
                 "/files//etc/passwd", "/files/%2Fetc%2Fpasswd", "/files/cases/A/../../../cohort-secret/secret.txt",
                 "/files/cases/A/link-out.txt", "/files/link-dir/secret.txt", "/files/cases", "/files/",
                 "/files/cases/A/%00image.nrrd", "/../cohort-secret/secret.txt", "/files/nothing-here.txt"):
        code, _, body = http_get(cohort_viewer.url, path)
        assert code in (400, 404), f"{path} answered {code}"
        assert b"not for the viewer" not in body and b"root:" not in body, path
    assert cohort_viewer.process.poll() is None


def test_closing_the_last_page_releases_the_scene_and_a_new_page_loads_it_again(browser, cohort_viewer):
    page = _open(browser, cohort_viewer)
    status = cohort_viewer.status()
    assert status["pages"] == 1 and status["loaded"] and status["nodes"] > 0
    page.close()
    wait_until(lambda: cohort_viewer.status()["pages"] == 0, "the server still counts the closed page")
    status = cohort_viewer.status()
    assert not status["loaded"] and status["nodes"] == 0, status
    page = _open(browser, cohort_viewer)
    try:
        status = cohort_viewer.status()
        assert status["loaded"] and status["nodes"] > 0 and status["case"] == "B"  # the case shown before
    finally:
        page.close()

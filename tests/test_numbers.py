"""Numbers are checked at every boundary: pixel sizes (CLI, kb.toml, web API), every number
and shape of rules/, and image dimensions, each refused with one line naming file and field."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from cli.web import create_app
from engine.samples import MAX_PIXELS, load_sample
from kb.config import Workspace
from kb.errors import ImageError
from tests.cli_runner import kb
from tests.workspaces import example_copy, png_claiming

REPO = Path(__file__).resolve().parent.parent
MAP = REPO / "examples" / "sound-bead-a.png"
BAD_PIXEL_SIZES = ["nan", "inf", "-inf", "1e-300", "0", "-1", "1e9"]




def one_error_line(err: str) -> str:
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    return lines[0]


# --- pixel sizes -------------------------------------------------------------------------------


@pytest.mark.parametrize("value", BAD_PIXEL_SIZES)
def test_kb_measure_refuses_a_pixel_size_that_is_not_finite_and_physical(value) -> None:
    code, out, err = kb("measure", MAP, "--um-per-px", value, "--json", "-w", REPO)
    assert code == 1 and out == ""
    assert "--um-per-px" in one_error_line(err)


@pytest.mark.parametrize("value", ["nan", "inf", "1e-300"])
def test_kb_qualify_refuses_a_bad_pixel_size_and_stores_nothing(
    example: Workspace, value
) -> None:
    code, out, err = kb("qualify", MAP, "--um-per-px", value, "--json", "-w", example.root)
    assert code == 1 and "Infinity" not in out and "NaN" not in out
    assert "--um-per-px" in one_error_line(err)
    code, out, _ = kb("history", "--json", "-w", example.root)
    assert all(q["sample"]["path"] != str(MAP) for q in json.loads(out).get("qualifications", []))


@pytest.mark.parametrize(
    "option", [("--threshold", "nan"), ("--review-margin", "inf"), ("--weight", "image=nan")]
)
def test_kb_qualify_refuses_a_decision_override_that_is_not_finite(
    example: Workspace, option
) -> None:
    code, out, err = kb("qualify", MAP, *option, "--json", "-w", example.root)
    assert code == 1 and out == ""
    assert "finite" in one_error_line(err)


def test_sensible_pixel_sizes_at_both_ends_of_the_range_are_taken() -> None:
    for value in ("0.001", "10000", "2.5"):
        code, out, err = kb("measure", MAP, "--um-per-px", value, "--json", "-w", REPO)
        assert code == 0, err
        assert json.loads(out)["measurements"][0]["um_per_px"] == float(value)


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e-300", "1e9", "0"])
def test_a_bad_pixel_size_in_kb_toml_is_one_line_naming_the_file_and_key(
    tmp_path: Path, value
) -> None:
    workspace = example_copy(tmp_path / "ws")
    config = workspace.root / "kb.toml"
    config.write_text(re.sub(r"(?m)^um_per_px = .*$", f"um_per_px = {value}", config.read_text()))
    code, out, err = kb("measure", MAP, "-w", workspace.root)
    assert code == 1
    line = one_error_line(err)
    assert str(config) in line and "metrology.um_per_px" in line


@pytest.mark.parametrize("value", ["nan", "inf", "1e-300", "1e9"])
def test_the_web_api_refuses_a_bad_pixel_size(tmp_path: Path, value) -> None:
    workspace = example_copy(tmp_path / "ws")
    with TestClient(create_app(workspace)) as client:
        response = client.post(
            "/api/qualify", params={"um_per_px": value},
            files=[("files", (MAP.name, MAP.read_bytes(), "image/png"))],
        )
    assert response.status_code == 400, response.text
    assert "um_per_px" in response.json()["error"]


# --- rules/ --------------------------------------------------------------------------------


def sync_error(workspace: Workspace) -> str:
    code, _, err = kb("sync", "-w", workspace.root)
    assert code == 1
    return one_error_line(err)


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))


@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        ("limit = 0.30", "limit = nan", "limit"),
        ("limit = 0.30", "limit = inf", "limit"),
        ("uncertainty = 0.01", "uncertainty = inf", "uncertainty"),
        ("review_margin = 0.25", "review_margin = inf", "review_margin"),
        ("threshold = 0.0", "threshold = -inf", "threshold"),
        ('fusion = "zsum"', 'fusion = "zsum"\nweights = { image = nan }', "image"),
    ],
)
def test_sync_refuses_a_number_that_is_not_finite_naming_file_and_field(
    tmp_path: Path, old, new, field
) -> None:
    workspace = example_copy(tmp_path / "ws")
    edit(workspace.rules_dir / "assessments" / "EA-5.toml", old, new)
    line = sync_error(workspace)
    assert "rules/assessments/EA-5.toml" in line and f"`{field}`" in line and "finite" in line


GEOMETRY = 'parent = "qualification"\nrule = "all"\ndescription = "Dilution'


@pytest.mark.parametrize(("k", "refused"), [("2.5", True), ("nan", True), ("2.0", False),
                                            ("2", False)])
def test_sync_takes_k_only_as_an_integer(tmp_path: Path, k, refused) -> None:
    workspace = example_copy(tmp_path / "ws")
    edit(workspace.rules_dir / "tree.toml", GEOMETRY,
         GEOMETRY.replace('rule = "all"', f'rule = "k_of_n"\nk = {k}'))
    code, _, err = kb("sync", "-w", workspace.root)
    if refused:
        assert code == 1
        line = one_error_line(err)
        assert "rules/tree.toml" in line and "`k`" in line and "integer" in line
    else:
        assert code == 0, err


def test_sync_refuses_a_gate_without_children(tmp_path: Path) -> None:
    workspace = example_copy(tmp_path / "ws")
    tree = workspace.rules_dir / "tree.toml"
    tree.write_text(tree.read_text() + '\n[gates.empty]\nrule = "all"\nparent = "qualification"\n')
    line = sync_error(workspace)
    assert "rules/tree.toml" in line and "'empty'" in line and "no children" in line


def test_an_assessment_file_with_an_upper_case_extension_is_refused_by_name(
    tmp_path: Path,
) -> None:
    workspace = example_copy(tmp_path / "ws")
    folder = workspace.rules_dir / "assessments"
    (folder / "EA-5.toml").rename(folder / "EA-5.TOML")
    line = sync_error(workspace)
    assert "rules/assessments/EA-5.TOML" in line and ".toml" in line


# --- image dimensions --------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(1, 1), (15, 200), (200, 15)])
def test_an_image_smaller_than_sixteen_pixels_a_side_is_refused(tmp_path: Path, size) -> None:
    path = tmp_path / "tiny.png"
    Image.new("RGB", size).save(path)
    with pytest.raises(ImageError) as caught:
        load_sample(path)
    assert str(path) in str(caught.value) and "16 x 16" in str(caught.value)


def test_a_sixteen_pixel_square_image_is_taken(tmp_path: Path) -> None:
    path = tmp_path / "small.png"
    Image.new("RGB", (16, 16)).save(path)
    assert load_sample(path).image.size == (16, 16)


def test_the_web_api_refuses_a_tiny_upload(tmp_path: Path) -> None:
    workspace = example_copy(tmp_path / "ws")
    path = tmp_path / "dot.png"
    Image.new("RGB", (4, 4)).save(path)
    with TestClient(create_app(workspace)) as client:
        response = client.post(
            "/api/qualify", files=[("files", ("dot.png", path.read_bytes(), "image/png"))]
        )
    assert response.status_code == 422 and "16 x 16" in response.json()["error"]


def test_the_pixel_limit_message_states_the_limit_that_is_applied(tmp_path: Path) -> None:
    side = int(MAX_PIXELS**0.5)
    # Just under the stated limit: not refused as too large (only as truncated: no data).
    under = png_claiming(tmp_path / "under.png", side - 1, side)
    with pytest.raises(ImageError) as caught:
        load_sample(under)
    assert "megapixel" not in str(caught.value)
    # Just over it: refused, and the message names the real limit and the real size.
    over = png_claiming(tmp_path / "over.png", side + 1, side)
    with pytest.raises(ImageError) as caught:
        load_sample(over)
    message = str(caught.value)
    assert f"{side + 1}x{side}" in message
    assert f"{MAX_PIXELS / 1e6:g} megapixel" in message

"""The Ni-WC example workspace at the repo root: its rules, references, samples and verdicts."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from engine.metrology.quantities import QUANTITIES, measure_image
from engine.metrology.synthetic import criteria_of, label_sample, write_dataset
from engine.qualify import QualifyOptions, qualify_paths
from engine.results import MeasurementEvidence, VLREvidence
from engine.samples import load_sample
from engine.session import VLKB
from engine.sync import compile_workspace
from engine.training.example import EXAMPLE_CRITERIA
from kb.config import Workspace
from tests.cli_runner import kb

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"




def read_labels(path: Path) -> dict[str, dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return {row["image"]: row for row in csv.DictReader(handle)}


def verdicts_of(results: list) -> dict[str, dict[str, str]]:
    return {Path(r.sample_path).name: {n.key: n.verdict for n in r.nodes} for r in results}


def test_the_limits_training_targets_are_those_of_the_example_rules(example: Workspace) -> None:
    def limits(criteria):
        return {key: [(r.quantity, r.op, r.limit, r.unit) for r in rules]
                for key, rules in criteria.items()}

    assert limits(criteria_of(compile_workspace(example))) == limits(EXAMPLE_CRITERIA)


def test_every_reference_shows_what_its_polarity_says(example: Workspace) -> None:
    legend = example.config.legend
    criteria = criteria_of(compile_workspace(example))
    for key, assessment in compile_workspace(example).assessments.items():
        by_polarity: dict[str, int] = {"positive": 0, "negative": 0}
        for reference in assessment.references:
            image = load_sample(example.rules_dir / reference.path).image
            measured = measure_image(image, legend, example.config.um_per_px)
            verdict = label_sample(measured.quantities, criteria)[key]
            assert verdict == ("accept" if reference.polarity == "positive" else "reject"), (
                reference.path
            )
            by_polarity[reference.polarity] += 1
        assert min(by_polarity.values()) >= 3, key


def test_committed_samples_get_their_labels_and_the_carbide_precondition_holds(
    example: Workspace,
) -> None:
    labels = read_labels(EXAMPLES / "labels.csv")
    outcome = qualify_paths(VLKB(example), sorted(EXAMPLES.glob("*.png")))
    assert not outcome.failures
    got = verdicts_of(outcome.results)
    assert set(got) == set(labels)
    assert {row["overall"] for row in labels.values()} == {"accept", "reject"}
    for name, row in labels.items():
        assert got[name]["qualification"] == row["overall"], name
        for key in EXAMPLE_CRITERIA:
            if got[name][key] != "not_assessed":
                assert got[name][key] == row[key], (name, key)
    flat = next(r for r in outcome.results if r.sample_path.endswith("flat-deposit.png"))
    skipped = {n.key: n for n in flat.nodes if n.verdict == "not_assessed"}
    assert set(skipped) == {"carbides", "EA-5", "EA-6"}
    assert "without a distinct bead" in skipped["carbides"].rationale


def test_verdicts_on_a_fresh_generated_set_agree_with_its_labels(
    example: Workspace, tmp_path: Path
) -> None:
    """Balanced accuracy >= 0.95 per assessment on decided samples; few sent to review."""
    paths = write_dataset(tmp_path, n=80, seed=20261125,
                          criteria=criteria_of(compile_workspace(example)))
    labels = read_labels(tmp_path / "labels.csv")
    outcome = qualify_paths(VLKB(example), paths)
    assert not outcome.failures
    got = verdicts_of(outcome.results)
    for key in EXAMPLE_CRITERIA:
        judged = [(labels[name][key], v[key]) for name, v in got.items()
                  if v[key] != "not_assessed"]
        decided = [(truth, verdict) for truth, verdict in judged if verdict != "review"]
        assert len(judged) - len(decided) <= 0.1 * len(judged), f"{key}: too many reviews"
        recalls = []
        for cls in ("accept", "reject"):
            of_class = [verdict for truth, verdict in decided if truth == cls]
            assert len(of_class) >= 5, f"{key}: too few {cls} samples to judge"
            recalls.append(sum(v == cls for v in of_class) / len(of_class))
        assert sum(recalls) / 2 >= 0.95, f"{key}: balanced accuracy {sum(recalls) / 2:.3f}"
    # Carbides are skipped exactly when the reinforcement was rejected.
    for v in got.values():
        assert (v["EA-5"] == "not_assessed") == (v["EA-3"] == "reject")


def test_measure_json_gives_every_quantity_and_refuses_a_photo(
    example: Workspace, tmp_path: Path
) -> None:
    photo = tmp_path / "photo.png"
    Image.radial_gradient("L").resize((320, 240)).convert("RGB").save(photo)
    sample = EXAMPLES / "sound-bead-a.png"
    code, out, err = kb("measure", sample, photo, "--json", "-w", example.root)
    assert code == 1
    assert err.strip().count("\n") == 0 and "not a phase map" in err
    document = json.loads(out)
    (measured,) = document["measurements"]
    assert set(measured) == {"path", "sha256", "um_per_px", "quantities", "unmeasurable", "notes"}
    assert set(measured["quantities"]) == set(QUANTITIES) and measured["unmeasurable"] == {}
    assert measured["um_per_px"] == example.config.um_per_px
    assert document["failures"][0]["path"] == str(photo)


def test_pixel_size_override_scales_lengths_and_areas(example: Workspace) -> None:
    sample = EXAMPLES / "sound-bead-a.png"
    _, default, _ = kb("measure", sample, "--json", "-w", example.root)
    _, halved, _ = kb("measure", sample, "--json", "--um-per-px", 5, "-w", example.root)
    q10 = json.loads(default)["measurements"][0]["quantities"]
    q5 = json.loads(halved)["measurements"][0]["quantities"]
    assert q5["bead_area_mm2"] == pytest.approx(q10["bead_area_mm2"] / 4)
    assert q5["reinforcement_height_mm"] == pytest.approx(q10["reinforcement_height_mm"] / 2)
    assert q5["carbide_fraction"] == pytest.approx(q10["carbide_fraction"])
    code, _, err = kb("measure", sample, "--um-per-px", -1, "-w", example.root)
    assert code == 1 and "--um-per-px must be a positive number" in err


def test_synth_command_is_deterministic_and_writes_truth_and_labels(
    example: Workspace, tmp_path: Path
) -> None:
    for folder in ("a", "b"):
        code, _, err = kb("synth", tmp_path / folder, "--n", 4, "--seed", 9, "--noise", 4,
                          "-w", example.root)
        assert code == 0, err
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == ["labels.csv", "labels.json", *(f"sample-{i:04d}.png" for i in range(4)),
                     "truth.csv"]
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    with (tmp_path / "a" / "truth.csv").open() as handle:
        assert set(QUANTITIES) <= set(csv.DictReader(handle).fieldnames or [])
    with (tmp_path / "a" / "labels.csv").open() as handle:
        header = csv.DictReader(handle).fieldnames
    assert header == ["image", *EXAMPLE_CRITERIA, "overall"]
    kb("synth", tmp_path / "c", "--n", 4, "--seed", 10)
    assert (tmp_path / "c" / "sample-0000.png").read_bytes() != (
        tmp_path / "a" / "sample-0000.png"
    ).read_bytes()
    code, _, _ = kb("synth", tmp_path / "jpeg", "--n", 1, "--jpeg", 80)
    assert code == 0 and (tmp_path / "jpeg" / "sample-0000.jpg").is_file()


def test_synth_labels_follow_the_workspace_rules_and_need_a_workspace(
    example: Workspace, tmp_path: Path, monkeypatch
) -> None:
    strict = tmp_path / "strict"
    shutil.copytree(example.root, strict, ignore=shutil.ignore_patterns("*.sqlite*"))
    ea4 = strict / "rules" / "assessments" / "EA-4.toml"
    ea4.write_text(ea4.read_text().replace("limit = 0.02", "limit = 0.0"))
    for name, root in (("as-example", example.root), ("strict", strict)):
        code, _, err = kb("synth", tmp_path / name, "--n", 12, "--seed", 3, "-w", root)
        assert code == 0, err
    example_labels = read_labels(tmp_path / "as-example" / "labels.csv")
    strict_labels = read_labels(tmp_path / "strict" / "labels.csv")
    assert any(row["EA-4"] == "accept" for row in example_labels.values())
    assert {row["EA-4"] for row in strict_labels.values()} == {"reject"}
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("KB_WORKSPACE", raising=False)
    code, out, err = kb("synth", tmp_path / "outside", "--n", 2, "--seed", 3)
    assert code == 0, err
    assert not (tmp_path / "outside" / "labels.csv").exists() and "no labels.csv" in out


def test_unbound_roles_judge_on_measurements_and_say_how_to_bind(example: Workspace) -> None:
    code, out, err = kb("models", "-w", example.root)
    assert code == 0
    assert "role 'text' is unbound" in err and 'set [roles] text = "clip"' in err
    outcome = qualify_paths(VLKB(example), [EXAMPLES / "sound-bead-a.png"], QualifyOptions())
    (result,) = outcome.results
    assert result.models == []
    ea1 = next(n for n in result.nodes if n.key == "EA-1")
    unused = {e.role: e.note for e in ea1.evidence if isinstance(e, VLREvidence)}
    assert set(unused) == {"text", "image"} and all("not bound" in n for n in unused.values())
    assert [m.quantity for m in ea1.evidence if isinstance(m, MeasurementEvidence)] == [
        "dilution_fraction"
    ]
    dilution = ea1.measurements["dilution_fraction"]
    assert f"Measured dilution {dilution * 100:.3g} % (must be at most 5 %)" in ea1.rationale
    ea2 = next(n for n in result.nodes if n.key == "EA-2")
    depth = ea2.measurements["haz_depth_mm"]
    assert f"Measured HAZ depth {depth:.3g} mm (must be at most 1 mm)" in ea2.rationale


def test_init_example_copies_the_workspace_and_refuses_unknown_names(tmp_path: Path) -> None:
    code, _, err = kb("init", tmp_path / "ws", "--example", "ni-wc-ded")
    assert code == 0, err
    assert (tmp_path / "ws" / "rules" / "references" / "EA-6" / "negative").is_dir()
    assert (tmp_path / "ws" / "examples" / "labels.csv").is_file()
    code, out, err = kb("sync", "--json", "-w", tmp_path / "ws")
    assert code == 0 and json.loads(out)["created"] is True
    code, _, err = kb("init", tmp_path / "other", "--example", "ti-64")
    assert code == 1 and "unknown example 'ti-64'; known examples: ni-wc-ded" in err
    assert not (tmp_path / "other").exists()
    code, _, err = kb("init", tmp_path / "ws", "--example", "ni-wc-ded")
    assert code == 1 and "already has kb.toml" in err

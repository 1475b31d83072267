"""Applicability: vision-language evidence is used only on images like the references.

A sample's appearance (engine/encoders: pooled activations a quarter up the image tower)
is compared with the references' under each role's model; beyond a limit the role's evidence
is not assessed, "outside the range of the references", and does not fuse.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.appearance import appearance_modality, model_appearance
from engine.evidence import APPLICABILITY_LIMIT, OUTSIDE
from engine.metrology.synthetic import Degradation, write_dataset
from engine.qualify import QualifyOptions, qualify_paths
from engine.results import VLREvidence
from engine.session import VLKB
from engine.sync import sync_workspace
from engine.training.train import TrainConfig, train
from kb.config import Workspace
from kb.embeddings import APPEARANCE, cached_embeddings
from tests.cli_runner import kb
from tests.foreign_images import photograph, uniform_grey, voronoi_grains
from tests.workspaces import (
    REPO,
    example_copy,
    micrograph,
    new_workspace,
    shipped_copy,
    write_carbide_assessment,
)


@pytest.fixture
def tiny(tmp_path: Path, tiny_clip_dir: Path, tiny_flava_dir: Path) -> Workspace:
    """EA-5 with prompts and references; text bound to tiny CLIP, image to tiny FLAVA."""
    ws = new_workspace(tmp_path / "ws", tiny_clip_dir, tiny_flava_dir)
    write_carbide_assessment(ws)
    sync_workspace(VLKB(ws))
    return ws


def vlr_items(result) -> dict[str, dict]:
    node = next(n for n in result.nodes if n.key == "EA-5")
    return {e.role: e.to_dict() for e in node.evidence}


def test_applicability_is_the_nearest_reference_distance_over_the_references_spread(
    tiny: Workspace, tmp_path: Path
) -> None:
    sample = micrograph(tmp_path / "sample.png", seed=77, pink_share=0.2)
    with VLKB(tiny) as vlkb:
        (result,) = qualify_paths(vlkb, [sample], QualifyOptions(normalize="batch")).results
        # batch normalisation of one image has no sigma: the evidence still records its range
        refs = sorted((tiny.rules_dir / "references").rglob("*.png"))
        for role, item in vlr_items(result).items():
            encoder = vlkb.models.encoder(role)  # text: CLIP, image: FLAVA, each on its own
            looks = encoder.appearance([Image.open(p).convert("RGB") for p in refs])
            mine = encoder.appearance([Image.open(sample).convert("RGB")])[0]
            between = 1.0 - looks.astype(np.float64) @ looks.T.astype(np.float64)
            np.fill_diagonal(between, np.inf)
            spread = between.min(axis=1).max()
            distances = 1.0 - looks.astype(np.float64) @ mine.astype(np.float64)
            got = item["applicability"]
            assert got["spread"] == pytest.approx(spread, rel=1e-4, abs=1e-7)
            assert got["distance"] == pytest.approx(distances.min(), rel=1e-4, abs=1e-7)
            assert got["ratio"] == pytest.approx(distances.min() / spread, rel=1e-3)
            assert got["nearest"] == refs[int(distances.argmin())].relative_to(
                tiny.rules_dir).as_posix()
            assert got["limit"] == APPLICABILITY_LIMIT and got["references"] == len(refs)
            assert got["within"] == (got["ratio"] <= APPLICABILITY_LIMIT)


def test_a_reference_itself_lies_within_the_range(tiny: Workspace) -> None:
    ref = tiny.rules_dir / "references" / "EA-5" / "positive" / "pos-1.png"
    with VLKB(tiny) as vlkb:
        (result,) = qualify_paths(vlkb, [ref]).results
    for item in vlr_items(result).values():
        assert item["applicability"]["distance"] == pytest.approx(0.0, abs=1e-5)
        assert item["applicability"]["within"] and item["status"] == "used"
        assert item["z"] is not None


def test_evidence_outside_the_range_is_not_assessed_and_does_not_fuse(
    tiny: Workspace, tmp_path: Path
) -> None:
    grey = tmp_path / "grey.png"
    uniform_grey(128, 48, 48).save(grey)
    with VLKB(tiny) as vlkb:
        (result,) = qualify_paths(vlkb, [grey]).results
    items = vlr_items(result)
    for item in items.values():
        assert item["applicability"]["ratio"] > APPLICABILITY_LIMIT
        assert item["status"] == "not_assessed" and item["z"] is None
        assert item["note"].startswith(OUTSIDE)
        assert item["delta"] is not None  # the similarity is kept for the record
    node = next(n for n in result.nodes if n.key == "EA-5")
    assert node.score is None and node.verdict == "not_assessed"
    assert OUTSIDE in (node.reason or "")


# --- the shipped model ------------------------------------------------------------------


@pytest.fixture(scope="module")
def shipped(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """The example workspace with both roles on models/vlkb-dual-niwc (offline)."""
    return shipped_copy(tmp_path_factory.mktemp("shipped"))


def test_the_shipped_model_judges_the_examples_and_fresh_maps_and_nothing_else(
    shipped: Workspace, tmp_path: Path
) -> None:
    ours = sorted((REPO / "examples").glob("*.png"))
    ours += write_dataset(tmp_path / "fresh", 16, seed=9090, legend=shipped.config.legend)
    foreign = {"photo.png": photograph(), "grey.png": uniform_grey(),
               "other-material.png": voronoi_grains(seed=3)}
    for name, image in foreign.items():
        image.save(tmp_path / name)
    strangers = [tmp_path / name for name in foreign]
    with VLKB(shipped) as vlkb:
        outcome = qualify_paths(vlkb, [*ours, *strangers])
    assert not outcome.failures
    ratios: dict[bool, list[float]] = {True: [], False: []}
    for result in outcome.results:
        is_ours = Path(result.sample_path).parent != tmp_path
        for node in result.nodes:
            for e in node.evidence:
                if not isinstance(e, VLREvidence):
                    continue
                assert e.applicability is not None, (result.sample_path, node.key)
                ratios[is_ours].append(e.applicability.ratio)
                if is_ours:
                    assert e.usable, (result.sample_path, node.key, e.note)
                else:
                    assert not e.usable and e.note.startswith(OUTSIDE), result.sample_path
    # the limit keeps at least a factor of two from either side
    assert max(ratios[True]) * 2 < APPLICABILITY_LIMIT < min(ratios[False]) / 2


def test_the_report_shows_how_far_the_sample_lies_from_the_references(
    tiny: Workspace, tmp_path: Path
) -> None:
    grey = tmp_path / "grey.png"
    uniform_grey(128, 48, 48).save(grey)
    code, out, err = kb("qualify", grey, "--report", "--json", "-w", tiny.root)
    assert code == 0, err
    (q,) = json.loads(out)["qualifications"]
    page = Path(q["report"]).read_text(encoding="utf-8")
    assert "Distance from the references" in page
    ratio = next(e for n in q["nodes"] for e in n["evidence"] if e["role"] == "image")[
        "applicability"]["ratio"]
    assert f"{ratio:.1f} × spread (limit {APPLICABILITY_LIMIT:.0f})" in page
    assert OUTSIDE in page


def ratios_by_folder(outcome) -> dict[str, list[tuple[str, float, bool]]]:
    """(sample name and node, ratio, usable) of every vision-language evidence, by folder."""
    found: dict[str, list[tuple[str, float, bool]]] = {}
    for result in outcome.results:
        path = Path(result.sample_path)
        for node in result.nodes:
            for e in node.evidence:
                if isinstance(e, VLREvidence) and e.role != "local":
                    assert e.applicability is not None, (path, node.key, e.role)
                    found.setdefault(path.parent.name, []).append(
                        (f"{path.stem} {node.key} {e.role}", e.applicability.ratio, e.usable))
    return found


def clean_and_noisy(
    root: Path, n: int, seed: int, legend: dict, noise: Degradation
) -> tuple[list[Path], list[Path]]:
    """The same n fresh maps twice, in folders `clean` and `noisy`: as drawn, and exported."""
    clean = write_dataset(root / "clean", n, seed=seed, legend=legend)
    return clean, write_dataset(root / "noisy", n, seed=seed, legend=legend, degradation=noise)


def example_on_tiny_dual(root: Path, families: tuple[str, ...]) -> Workspace:
    """The example with both roles on a tiny dual encoder trained over these generator
    families (every image varied by them; none: clean default maps), in place of the
    shipped one."""
    config = TrainConfig(
        seed=5, n_images=16, epochs=2, batch_size=8, image_height=60, image_width=80,
        projection_dim=16, draws=2, workers=1, captions_per_group=3,
        families=families, family_share=1.0,
    )
    train(root / "models" / "vlkb-dual-niwc", config, log=lambda _: None)
    return example_copy(root, unbind_roles=False)


@pytest.fixture(scope="module")
def never_saw_noise(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """The example with both roles on a tiny dual encoder trained on clean default maps
    only (no generator family in its training record), in place of the shipped one."""
    return example_on_tiny_dual(tmp_path_factory.mktemp("never-saw-noise"), families=())


def test_a_model_never_trained_on_noise_is_measured_on_the_raw_pixels(
    never_saw_noise: Workspace, tmp_path: Path
) -> None:
    """Noise it never saw must count against it: its appearance is the raw pixels' (the
    earlier shipped model, trained so, put noisy exports 27-29 spreads out; docs/rules.md)."""
    clean, noisy = clean_and_noisy(tmp_path, 2, 6061, never_saw_noise.config.legend,
                                   Degradation(noise_sigma=12.0, jpeg_quality=75))
    with VLKB(never_saw_noise) as vlkb:
        qualify_paths(vlkb, [*clean, *noisy])
        encoder = vlkb.models.encoder("image")
        assert not encoder.acquisition_trained
        assert model_appearance(encoder, never_saw_noise.config.legend) == APPEARANCE
        shas = [hashlib.sha256(p.read_bytes()).hexdigest() for p in [*clean, *noisy]]
        with vlkb.kb.reading() as session:
            raw = cached_embeddings(session, encoder.fingerprint, APPEARANCE, shas)
            by_phase = cached_embeddings(session, encoder.fingerprint,
                                         appearance_modality(never_saw_noise.config.legend), shas)
    assert set(raw) == set(shas) and not by_phase


@pytest.fixture(scope="module")
def acquisition_trained(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """The example with both roles on a tiny dual encoder trained over the acquisition
    family (its training record says so), in place of the shipped one."""
    return example_on_tiny_dual(tmp_path_factory.mktemp("acquisition-trained"),
                                families=("acquisition",))


def test_a_model_trained_over_acquisition_reads_a_noisy_export_as_the_map_it_shows(
    acquisition_trained: Workspace, tmp_path: Path
) -> None:
    legend = acquisition_trained.config.legend
    clean, noisy = clean_and_noisy(tmp_path, 3, 6062, legend, Degradation(noise_sigma=12.0))
    with VLKB(acquisition_trained) as vlkb:
        found = ratios_by_folder(qualify_paths(vlkb, [*clean, *noisy]))
        with vlkb.kb.reading() as session:
            (model,) = {vlkb.models.encoder(role).fingerprint for role in ("text", "image")}
            shas = [hashlib.sha256(p.read_bytes()).hexdigest() for p in noisy]
            assert set(cached_embeddings(
                session, model, appearance_modality(legend), shas)) == set(shas)
    assert len(found["noisy"]) == len(found["clean"]) > 0
    for (what, read, _), (_, seen, _) in zip(found["noisy"], found["clean"], strict=True):
        assert abs(read - seen) <= 0.1 * max(seen, 1.0), (what, read, seen)


def with_margins(path: Path, out: Path, margin: int, background: tuple[int, int, int]) -> Path:
    """The same map with `margin` pixels of background on every side: a wider picture
    around the same bead."""
    image = Image.open(path).convert("RGB")
    framed = Image.new("RGB", (image.width + 2 * margin, image.height + 2 * margin), background)
    framed.paste(image, (margin, margin))
    out.parent.mkdir(parents=True, exist_ok=True)
    framed.save(out)
    return out


def test_a_model_trained_over_acquisition_reads_a_wider_frame_as_the_bead_it_shows(
    acquisition_trained: Workspace, tmp_path: Path
) -> None:
    """Appearance by phase: margins change how much of the picture is background, not
    what the background, the bead, its carbides or the HAZ look like."""
    legend = acquisition_trained.config.legend
    clean = write_dataset(tmp_path / "clean", 3, seed=6063, legend=legend)
    framed = [with_margins(p, tmp_path / "framed" / p.name, 200, legend["background"])
              for p in clean]
    with VLKB(acquisition_trained) as vlkb:
        found = ratios_by_folder(qualify_paths(vlkb, [*clean, *framed]))
    assert len(found["framed"]) == len(found["clean"]) > 0
    for (what, framed_ratio, usable), (_, seen, _) in zip(
        found["framed"], found["clean"], strict=True
    ):
        assert usable and framed_ratio <= max(2.0 * seen, 1.0), (what, framed_ratio, seen)

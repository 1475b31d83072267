"""The Ray executor (`--executor ray`) on this session's local Ray cluster: the same verdicts
and scores as the in-process executor, records stored in input order by the driver alone, a
bad file failing alone, and every refusal one line with nothing stored."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from engine.appearance import model_appearance
from engine.metrology.synthetic import write_dataset
from engine.qualify import ExecutorOptions, QualifyOptions, qualify_paths
from engine.results import QualificationResult, VLREvidence
from engine.session import VLKB
from engine.sync import sync_workspace
from kb.config import Workspace
from kb.embeddings import cached_embeddings
from kb.errors import VLKBError
from tests.cli_runner import kb
from tests.workspaces import REPO, example_copy, micrograph, new_workspace, write_carbide_assessment

EXAMPLES = REPO / "examples"
TOLERANCE = 1e-6  # the scores' agreement the issue asks for (relative above 1: a local z of
# -25 from float32 patch features differs by ~1e-6 between processes); in practice ~1e-7


def shipped_example(root: Path) -> Workspace:
    """The example workspace with both roles on the shipped dual encoder, its own database."""
    root.mkdir(parents=True)
    (root / "models").symlink_to(REPO / "models", target_is_directory=True)
    return example_copy(root, unbind_roles=False)


def tiny_workspace(root: Path, clip: Path, flava: Path) -> Workspace:
    ws = new_workspace(root, clip, flava)
    write_carbide_assessment(ws)
    sync_workspace(VLKB(ws))
    return ws


def qualify(ws: Workspace, files: list[Path], *extra: object) -> tuple[int, dict, str]:
    code, out, err = kb("qualify", *files, "--json", "-w", ws.root, *extra)
    return code, json.loads(out), err


def scores_of(node: dict) -> list[float | None]:
    """Every number a node's verdict rests on: its fused score and each role's delta and z."""
    numbers = [node.get("score")]
    for item in node.get("evidence", []):
        numbers += [item.get("delta"), item.get("z"), item.get("value")]
    return numbers


def assert_same_documents(ours: list[dict], theirs: list[dict]) -> None:
    """Same samples in the same order, same verdict on every node, numbers within TOLERANCE."""
    assert [q["sample"]["path"] for q in ours] == [q["sample"]["path"] for q in theirs]
    for a, b in zip(ours, theirs, strict=True):
        assert a["sample"]["sha256"] == b["sample"]["sha256"]
        assert a["sample"]["thumbnail_sha256"] == b["sample"]["thumbnail_sha256"]
        assert a["verdict"] == b["verdict"]
        assert [(n["key"], n["verdict"]) for n in a["nodes"]] == [
            (n["key"], n["verdict"]) for n in b["nodes"]
        ]
        for x, y in zip(a["nodes"], b["nodes"], strict=True):
            for p, q in zip(scores_of(x), scores_of(y), strict=True):
                assert (p is None) == (q is None), (x["key"], p, q)
                if p is not None:
                    assert abs(p - q) <= TOLERANCE * max(1.0, abs(q)), (x["key"], p, q)


def assert_same_results(ours: list[QualificationResult], theirs: list[QualificationResult]):
    assert_same_documents([r.document() for r in ours], [r.document() for r in theirs])


def test_ray_judges_the_example_as_in_process_does_and_a_bad_file_fails_alone(
    ray_cluster: None, tmp_path: Path
) -> None:
    images = sorted(EXAMPLES.glob("*.png"))
    bad = tmp_path / "not-a-micrograph.png"
    bad.write_text("a lab note saved under the wrong name\n")
    inputs = [*images[:3], bad, *images[3:]]
    local = shipped_example(tmp_path / "local")
    distributed = shipped_example(tmp_path / "ray")

    code, expected, err_local = qualify(local, inputs)
    assert code == 1
    code, got, err = qualify(distributed, inputs, "--executor", "ray", "--workers", "2")
    assert code == 1
    line = f"error: {bad}: not an image VLKB can read; use PNG, JPEG, TIFF or BMP"
    assert [e for e in err.splitlines() if e.startswith("error:")] == [line]
    assert got["failures"] == expected["failures"] == [
        {"path": str(bad), "error": line.removeprefix("error: ")}
    ]
    assert [Path(q["sample"]["path"]) for q in got["qualifications"]] == images
    ids = [q["id"] for q in got["qualifications"]]
    assert ids == sorted(ids) and len(set(ids)) == len(images)  # stored in input order
    assert_same_documents(got["qualifications"], expected["qualifications"])
    assert any(n.get("score") is not None for q in got["qualifications"] for n in q["nodes"])
    code, out, err = kb("audit", "verify", "-w", distributed.root)
    assert code == 0 and f"{len(images)} qualification(s)" in out, err
    # The driver cached what the workers embedded, as the in-process executor caches.
    shas = [q["sample"]["sha256"] for q in got["qualifications"]]
    (model,) = {m["fingerprint"] for m in got["qualifications"][0]["models"]
                if m["role"] in ("text", "image")}
    for ws in (local, distributed):
        with VLKB(ws) as vlkb, vlkb.kb.reading() as session:
            looks = model_appearance(vlkb.models.encoder("image"), ws.config.legend)
            for modality in ("image", looks):
                assert set(cached_embeddings(session, model, modality, shas)) == set(shas)


def test_two_workers_stream_a_batch_normalised_run_across_chunks_in_input_order(
    ray_cluster: None, tmp_path: Path
) -> None:
    local = shipped_example(tmp_path / "local")
    files = write_dataset(tmp_path / "in", 40, seed=4040, legend=local.config.legend)
    broken = tmp_path / "in" / "truncated.png"
    broken.write_bytes(files[20].read_bytes()[:300])
    inputs = [*files[:20], broken, *files[20:]]  # chunks of 32 and 9: one for each actor
    with VLKB(local) as vlkb:
        expected = qualify_paths(vlkb, inputs, QualifyOptions(normalize="batch"))
    ray = QualifyOptions(normalize="batch", executor=ExecutorOptions("ray", workers=2))
    with VLKB(shipped_example(tmp_path / "ray")) as vlkb:
        got = qualify_paths(vlkb, inputs, ray)
    assert [f.path for f in got.failures] == [f.path for f in expected.failures] == [str(broken)]
    assert "damaged or truncated" in got.failures[0].error
    assert [Path(r.sample_path) for r in got.results] == files
    assert [r.id for r in got.results] == sorted(r.id for r in got.results)
    assert_same_results(got.results, expected.results)
    z = [e for r in got.results for n in r.nodes for e in n.evidence
         if isinstance(e, VLREvidence) and e.z is not None]
    # the vision-language roles over the batch; local evidence always by its references
    assert z and all(e.normalization == "batch (n=40)" for e in z if e.role != "local")
    assert all(e.normalization.startswith("references") for e in z if e.role == "local")


def test_evaluate_on_ray_scores_the_labels_as_in_process_does(
    ray_cluster: None, tmp_path: Path
) -> None:
    def evaluate(ws: Workspace, *extra: object) -> dict:
        code, out, err = kb("evaluate", EXAMPLES, "--labels", EXAMPLES / "labels.csv",
                            "--json", "--out", ws.root / "evaluation", "-w", ws.root, *extra)
        assert code == 0, err
        return json.loads(out)

    expected = evaluate(shipped_example(tmp_path / "local"))
    got = evaluate(shipped_example(tmp_path / "ray"), "--executor", "ray", "--workers", "1")
    assert got["images"] == expected["images"] == len(list(EXAMPLES.glob("*.png")))
    for key, blocks in expected["assessments"].items():
        for mode, metrics in blocks.items():
            for name, value in metrics.items():
                theirs = got["assessments"][key][mode][name]
                if isinstance(value, float):
                    assert theirs == pytest.approx(value, abs=TOLERANCE), (key, mode, name)
                else:
                    assert theirs == value, (key, mode, name)
    assert got["overall"] == expected["overall"]


def test_a_worker_with_other_model_files_than_the_driver_is_refused_and_nothing_stored(
    ray_cluster: None, tmp_path: Path, tiny_clip_dir: Path, tiny_flava_dir: Path
) -> None:
    import shutil

    clip = tmp_path / "clip"
    shutil.copytree(tiny_clip_dir, clip)
    ws = tiny_workspace(tmp_path / "ws", clip, tiny_flava_dir)
    files = [micrograph(tmp_path / "in" / f"s{i}.png", seed=i, pink_share=0.1) for i in range(3)]
    options = QualifyOptions(executor=ExecutorOptions("ray", workers=1))
    with VLKB(ws) as vlkb:
        vlkb.models.encoders()  # the driver has its models (and their fingerprints) ...
        weights = clip / "model.safetensors"
        tensors = load_file(weights)
        name = next(iter(tensors))
        tensors[name] = tensors[name] + 0.01
        save_file(tensors, weights)  # ... when the files the workers load change under it
        with pytest.raises(VLKBError, match="every node needs the same model files") as caught:
            qualify_paths(vlkb, files, options)
    assert "\n" not in str(caught.value) and "'clip'" in str(caught.value)
    code, out, _ = kb("history", "--json", "-w", ws.root)
    assert code == 0 and json.loads(out)["qualifications"] == []


def test_ray_options_are_checked_and_refused_in_one_line(
    ray_cluster: None, tmp_path: Path
) -> None:
    ws = example_copy(tmp_path / "ws")  # measurements only
    image = sorted(EXAMPLES.glob("*.png"))[0]
    for extra, message in [
        (("--workers", "2"), "error: --workers is an option of the Ray executor: add "
                             "--executor ray"),
        (("--ray-address", "10.0.0.1:6379"), "error: --ray-address is an option of the Ray "
                                             "executor"),
        (("--executor", "dask"), "error: --executor 'dask' is unknown; use one of "
                                 "in-process, ray"),
        (("--executor", "ray", "--workers", "0"), "error: --workers must be at least 1"),
        (("--executor", "ray", "--workers", "3"), "error: --workers 3: the Ray cluster has 2 "
                                                  "CPU(s)"),
    ]:
        code, out, err = kb("qualify", image, "-w", ws.root, *extra)
        assert code == 1 and out == "" and err.count("\n") == 1, (extra, err)
        assert err.startswith(message), (extra, err)
    code, out, _ = kb("history", "--json", "-w", ws.root)
    assert json.loads(out)["qualifications"] == []


def test_without_ray_installed_the_error_names_the_extra_and_nothing_is_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws = example_copy(tmp_path / "ws")
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as if not installed
    image = sorted(EXAMPLES.glob("*.png"))[0]
    for command in (("qualify", image), ("evaluate", EXAMPLES, "--labels",
                                         EXAMPLES / "labels.csv")):
        code, out, err = kb(*command, "--executor", "ray", "-w", ws.root)
        assert code == 1 and out == "" and err.count("\n") == 1, err
        assert "pip install 'vlkb[ray]'" in err and "not installed" in err
    code, out, _ = kb("history", "--json", "-w", ws.root)
    assert json.loads(out)["qualifications"] == []

"""The vertical slice through the real CLI: init, add-assessment, add-reference, sync,
qualify --json, with tiny real CLIP and FLAVA models, checked against an independent
computation of the article's formulas; what stores runs on SQLite and PostgreSQL."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel, FlavaModel

from tests.backends import both_backends, sql
from tests.cli_runner import kb
from tests.workspaces import micrograph, use_database

POSITIVE = ["many pink carbide particles in the green bead", "dense carbides in the matrix"]
NEGATIVE = ["few pink carbides, mostly green matrix", "carbides dissolved in the bead"]




@pytest.fixture
def workspace(request, tmp_path, tiny_clip_dir, tiny_flava_dir) -> Path:
    """A workspace made through the CLI; its knowledge base on each backend @both_backends."""
    root = tmp_path / "ws"
    code, _, err = kb("init", root, "--clip", tiny_clip_dir, "--flava", tiny_flava_dir)
    assert code == 0, err
    if "database_url" in request.fixturenames:
        use_database(root, request.getfixturevalue("database_url"))
    args = [
        "add-assessment",
        "EA-5",
        "--name",
        "Carbide dissolution",
        "--criterion",
        "At least 30 % carbide area",
        "-w",
        root,
    ]
    for p in POSITIVE:
        args += ["--positive", p]
    for n in NEGATIVE:
        args += ["--negative", n]
    code, out, err = kb(*args)
    assert code == 0, err
    assert "+ assessment EA-5" in out
    refs = tmp_path / "refs"
    pos = [micrograph(refs / f"p{i}.png", seed=i, pink_share=0.3 + 0.05 * i) for i in range(3)]
    neg = [micrograph(refs / f"n{i}.png", seed=20 + i, pink_share=0.02 * (i + 1)) for i in range(3)]
    code, out, err = kb("add-reference", "EA-5", *pos, "--positive", "-w", root)
    assert code == 0, err
    code, out, err = kb("add-reference", "EA-5", *neg, "--negative", "-w", root)
    assert code == 0, err
    assert "added reference negative references/EA-5/negative/n0.png" in out
    return root


def samples(tmp_path: Path, n: int = 4) -> list[Path]:
    return [
        micrograph(tmp_path / "samples" / f"s{i}.png", seed=100 + i, pink_share=0.08 * i)
        for i in range(n)
    ]


def features(model, tokenizer, processor, images, texts, cls: bool):
    """Embeddings straight from transformers, written independently of engine/encoders/."""

    def first(x):
        x = x if isinstance(x, torch.Tensor) else x.pooler_output
        return x[:, 0] if cls else x

    with torch.no_grad():
        pixels = processor(images=[i.convert("RGB") for i in images], return_tensors="pt")
        img = first(model.get_image_features(pixel_values=pixels["pixel_values"]))
        tok = tokenizer(texts, padding=True, return_tensors="pt") if texts else None
        txt = (
            first(
                model.get_text_features(
                    **{k: v for k, v in tok.items() if k != "token_type_ids" or cls}
                )
            )
            if texts
            else None
        )
    unit = lambda t: (t / t.norm(dim=-1, keepdim=True)).double().numpy()  # noqa: E731
    return unit(img), (unit(txt) if texts else None)


def delta(z, pos, neg):
    """cos(z, mean+) - cos(z, mean-), means of unit vectors re-normalised."""
    p = pos.mean(0)
    n = neg.mean(0)
    p, n = p / np.linalg.norm(p), n / np.linalg.norm(n)
    return z @ p - z @ n


def test_batch_qualification_matches_the_article_formulas(
    workspace, tmp_path, tiny_clip_dir, tiny_flava_dir
):
    from PIL import Image

    files = samples(tmp_path)
    code, out, err = kb("qualify", *files, "--normalize", "batch", "--json", "-w", workspace)
    assert code == 0, err
    doc = json.loads(out)
    assert len(doc["qualifications"]) == 4

    images = [Image.open(f) for f in files]
    refs = sorted((workspace / "rules/references/EA-5").glob("*/*.png"))
    ref_pos = [Image.open(r) for r in refs if r.parent.name == "positive"]
    ref_neg = [Image.open(r) for r in refs if r.parent.name == "negative"]

    clip = CLIPModel.from_pretrained(tiny_clip_dir).eval()
    clip_tok, clip_proc = (
        AutoTokenizer.from_pretrained(tiny_clip_dir),
        AutoImageProcessor.from_pretrained(tiny_clip_dir),
    )
    z_img, z_txt = features(clip, clip_tok, clip_proc, images, POSITIVE + NEGATIVE, cls=False)
    delta_text = delta(z_img, z_txt[:2], z_txt[2:])

    flava = FlavaModel.from_pretrained(tiny_flava_dir).eval()
    fl_tok, fl_proc = (
        AutoTokenizer.from_pretrained(tiny_flava_dir),
        AutoImageProcessor.from_pretrained(tiny_flava_dir),
    )
    f_img, _ = features(flava, fl_tok, fl_proc, images, [], cls=True)
    f_pos, _ = features(flava, fl_tok, fl_proc, ref_pos, [], cls=True)
    f_neg, _ = features(flava, fl_tok, fl_proc, ref_neg, [], cls=True)
    delta_image = delta(f_img, f_pos, f_neg)

    z_text = (delta_text - delta_text.mean()) / delta_text.std()
    z_image = (delta_image - delta_image.mean()) / delta_image.std()
    hybrid = z_text + z_image

    for i, q in enumerate(doc["qualifications"]):
        assert q["sample"]["path"] == str(files[i].resolve())
        assert q["normalization"] == "batch"
        assert q["ruleset"]["version"] == 3 and len(q["ruleset"]["hash"]) == 64
        assert {m["role"]: m["name"] for m in q["models"]} == {"text": "clip", "image": "flava"}
        node = next(n for n in q["nodes"] if n["key"] == "EA-5")
        ev = {e["role"]: e for e in node["evidence"]}
        assert ev["text"]["delta"] == pytest.approx(delta_text[i], abs=1e-4)
        assert ev["image"]["delta"] == pytest.approx(delta_image[i], abs=1e-4)
        assert ev["text"]["mu"] == pytest.approx(delta_text.mean(), abs=1e-4)
        assert ev["text"]["sigma"] == pytest.approx(delta_text.std(), abs=1e-4)
        assert ev["text"]["z"] == pytest.approx(z_text[i], abs=1e-4)
        assert ev["image"]["z"] == pytest.approx(z_image[i], abs=1e-4)
        assert node["score"] == pytest.approx(hybrid[i], abs=1e-4)
        assert node["threshold"] == 0.0
        assert node["verdict"] == ("accept" if hybrid[i] >= 0 else "reject")
        assert q["verdict"] == node["verdict"]  # the root gate `all` over one assessment
        assert ev["text"]["model"] == "clip" and ev["image"]["model"] == "flava"
        assert node["rationale"].startswith("Carbide dissolution: ")
    # z-scores over a batch are centred: the article's hybrid sums to zero
    assert hybrid.sum() == pytest.approx(0, abs=1e-6)


def test_calibrated_mode_judges_one_image_alone_and_is_batch_independent(workspace, tmp_path):
    files = samples(tmp_path)
    code, alone, err = kb("qualify", files[0], "--json", "-w", workspace)
    assert code == 0, err
    code, together, err = kb("qualify", *files, "--json", "-w", workspace)
    assert code == 0, err
    first = json.loads(alone)["qualifications"][0]
    same = json.loads(together)["qualifications"][0]
    assert first["normalization"] == "calibrated"

    def ea5(q):
        return next(n for n in q["nodes"] if n["key"] == "EA-5")

    assert ea5(first)["score"] == pytest.approx(ea5(same)["score"], abs=1e-9)
    ev = {e["role"]: e for e in ea5(first)["evidence"]}
    assert "references" in ev["image"]["normalization"]
    assert ev["image"]["sigma"] > 0
    assert ev["text"]["z"] == pytest.approx(
        (ev["text"]["delta"] - ev["text"]["mu"]) / ev["text"]["sigma"]
    )


def test_batch_of_one_is_not_silently_judged(workspace, tmp_path):
    files = samples(tmp_path, 1)
    code, out, err = kb("qualify", files[0], "--normalize", "batch", "--json", "-w", workspace)
    assert code == 0, err
    node = next(n for n in json.loads(out)["qualifications"][0]["nodes"] if n["key"] == "EA-5")
    assert node["verdict"] == "not_assessed"
    assert "at least 2 images" in node["rationale"]


@both_backends
def test_sync_is_idempotent_and_versions_changes(workspace):
    code, out, _ = kb("sync", "-w", workspace)
    assert code == 0 and "unchanged" in out
    path = workspace / "rules/assessments/EA-5.toml"
    path.write_text(path.read_text().replace("dense carbides", "densely packed carbides"))
    code, out, _ = kb("sync", "--json", "-w", workspace)
    result = json.loads(out)
    assert result["created"] and result["version"] == 4
    assert result["changes"]["changed"]["assessment EA-5"] == [
        "added prompt positive 'densely packed carbides in the matrix'",
        "removed prompt positive 'dense carbides in the matrix'",
    ]


def test_qualify_refuses_unsynced_rules(workspace, tmp_path):
    path = workspace / "rules/assessments/EA-5.toml"
    path.write_text(path.read_text().replace('fusion = "zsum"', 'fusion = "weighted"'))
    code, out, err = kb("qualify", *samples(tmp_path, 2), "-w", workspace)
    assert code == 1 and "run `kb sync`" in err and out == ""


@both_backends
def test_bad_files_fail_alone_and_the_rest_are_stored(workspace, tmp_path):
    good = samples(tmp_path, 3)
    missing = tmp_path / "nowhere.png"
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    code, out, err = kb(
        "qualify", good[0], missing, text, good[1], good[2], "--json", "-w", workspace
    )
    assert code == 1
    doc = json.loads(out)
    assert [Path(q["sample"]["path"]).name for q in doc["qualifications"]] == [
        "s0.png",
        "s1.png",
        "s2.png",
    ]
    assert [f["path"] for f in doc["failures"]] == [str(missing), str(text)]
    assert f"{missing}: no such file" in err and "not an image" in err
    code, out, _ = kb("history", "--json", "-w", workspace)
    assert len(json.loads(out)["qualifications"]) == 3
    code, out, _ = kb("audit", "verify", "-w", workspace)
    assert code == 0 and "(3 qualification(s), 0 feedback" in out



def test_a_record_the_database_refuses_is_lost_alone_and_its_chunk_is_kept(workspace, tmp_path):
    """A chunk of files is stored in one transaction; when the database refuses one record,
    the chunk is stored again file by file, so only that file fails."""
    import sqlite3

    good = samples(tmp_path, 4)
    with sqlite3.connect(workspace / "kb.sqlite") as con:  # a refusal of the database's own
        con.execute(
            "CREATE TRIGGER refuse_s2 BEFORE INSERT ON qualification "
            "WHEN NEW.sample_path LIKE '%s2.png' BEGIN SELECT RAISE(ABORT, 'quota'); END"
        )
    code, out, err = kb("qualify", *good, "--json", "-w", workspace)
    assert code == 1
    doc = json.loads(out)
    assert [Path(q["sample"]["path"]).name for q in doc["qualifications"]] == [
        "s0.png", "s1.png", "s3.png"
    ]
    assert [Path(f["path"]).name for f in doc["failures"]] == ["s2.png"]
    assert "s2.png: not stored" in err and "quota" in err
    ids = [q["id"] for q in doc["qualifications"]]
    assert ids == sorted(ids)
    code, out, _ = kb("audit", "verify", "-w", workspace)
    assert code == 0 and "(3 qualification(s), 0 feedback" in out

@both_backends
def test_show_returns_the_stored_record(workspace, tmp_path):
    code, out, _ = kb("qualify", *samples(tmp_path, 2), "--json", "-w", workspace)
    stored = json.loads(out)["qualifications"][1]
    code, shown, _ = kb("show", str(stored["id"]), "--json", "-w", workspace)
    assert code == 0
    assert json.loads(shown)["nodes"] == stored["nodes"]
    code, _, err = kb("show", "999", "-w", workspace)
    assert code == 1 and "no qualification with ID 999" in err


@both_backends
def test_embeddings_are_cached_once_per_model(workspace, tmp_path):
    files = samples(tmp_path, 3)
    kb("qualify", *files, "-w", workspace)
    ((before,),) = sql(workspace, "SELECT COUNT(*) FROM embedding")
    per_model = dict(sql(workspace, "SELECT modality, COUNT(DISTINCT model_fingerprint) "
                                    "FROM embedding GROUP BY modality"))
    kb("qualify", *files, "-w", workspace)
    ((after,),) = sql(workspace, "SELECT COUNT(*) FROM embedding")
    # 6 references + 3 samples for each of 2 models, embedded and described by appearance,
    # and 4 prompts for the text model
    assert before == after == (6 + 3) * 2 * 2 + 4
    assert per_model == {"image": 2, "appearance": 2, "text": 1}

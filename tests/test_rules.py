"""The rules compiler: what experts write compiles exactly, and every mistake is named."""

from pathlib import Path

import pytest

from engine.sync import compile_workspace
from kb.errors import RulesError
from kb.rules import compile_rules
from tests.workspaces import new_workspace, write_carbide_assessment


@pytest.fixture
def ws(tmp_path: Path):
    workspace = new_workspace(tmp_path / "ws")
    write_carbide_assessment(workspace)
    return workspace


def assessment_file(ws) -> Path:
    return ws.rules_dir / "assessments" / "EA-5.toml"


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"test setup: {old!r} not in {path.name}"
    path.write_text(text.replace(old, new))


def test_compiles_prompts_references_and_tree(ws):
    ruleset = compile_rules(ws.rules_dir)
    a = ruleset.assessments["EA-5"]
    assert ruleset.root == "qualification"
    assert ruleset.children("qualification") == ["EA-5"]
    assert len(a.prompts_of("positive")) == 2 and len(a.prompts_of("negative")) == 2
    assert [r.path for r in a.references_of("positive")] == [
        f"references/EA-5/positive/pos-{i}.png" for i in range(3)
    ]
    assert all(len(r.sha256) == 64 for r in a.references)


def test_hash_ignores_formatting_but_not_content(ws):
    before = compile_rules(ws.rules_dir).content_hash
    path = assessment_file(ws)
    path.write_text("# a comment an expert added\n" + path.read_text())
    assert compile_rules(ws.rules_dir).content_hash == before
    edit(path, "dense carbides", "densely packed carbides")
    assert compile_rules(ws.rules_dir).content_hash != before


def test_hash_follows_reference_image_content(ws):
    before = compile_rules(ws.rules_dir).content_hash
    ref = ws.rules_dir / "references/EA-5/negative/neg-0.png"
    from tests.workspaces import micrograph

    micrograph(ref, seed=99, pink_share=0.01)
    assert compile_rules(ws.rules_dir).content_hash != before


def test_ruleset_round_trips_through_its_snapshot(ws):
    from kb.rules import Ruleset

    ruleset = compile_rules(ws.rules_dir)
    again = Ruleset.from_dict(ruleset.to_dict())
    assert again == ruleset and again.content_hash == ruleset.content_hash


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('name = "Carbide dissolution"', 'name = "x"\ncolour = "pink"', "unknown field(s) colour"),
        ('name = "Carbide dissolution"\n', "", "missing required field(s) name"),
        ('key = "EA-5"', 'key = "EA-9"', "must match the file name"),
        ("threshold = 0.0", "threshold = 0.0\nweights = { texture = 1.0 }", "unknown role(s)"),
        ('fusion = "zsum"', 'fusion = "median"', "unknown fusion 'median'"),
        (
            'parent = "qualification"',
            'parent = "geometry"',
            "parent 'geometry', which is not a gate",
        ),
        ('negative = ["few pink', 'xnegative = ["few pink', "unknown field(s) xnegative"),
        (
            "[decision]",
            '[references]\npositive = ["references/EA-5/positive/*.png"]\n'
            'negative = ["references/EA-5/nothing/*.png"]\n[decision]',
            "matches no file",
        ),
        ("[decision]", '[[preconditions]]\nnode = "EA-3"\n[decision]', "unknown node 'EA-3'"),
        (
            "[decision]",
            '[[measurements]]\nquantity = "carbide_fraction"\nop = "=>"\n'
            'limit = 0.3\nunit = "fraction"\n[decision]',
            "unknown op '=>'",
        ),
        ("threshold = 0.0", 'threshold = "high"', "`threshold` must be a number"),
        ('key = "EA-5"', 'key = "EA-5', "not valid TOML"),
    ],
)
def test_invalid_assessment_names_file_and_problem(ws, old, new, message):
    edit(assessment_file(ws), old, new)
    with pytest.raises(RulesError) as caught:
        compile_rules(ws.rules_dir)
    text = str(caught.value)
    assert "rules/assessments/EA-5.toml" in text
    assert message in text
    assert "\n" not in text


def test_unreadable_reference_image(ws):
    (ws.rules_dir / "references/EA-5/positive/broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnope")
    with pytest.raises(RulesError, match=r"EA-5.toml.*broken.png is unreadable"):
        compile_rules(ws.rules_dir)


def test_one_sided_references_compile_but_say_why_they_cannot_score(ws):
    for ref in (ws.rules_dir / "references/EA-5/negative").iterdir():
        ref.unlink()
    a = compile_rules(ws.rules_dir).assessments["EA-5"]
    assert a.one_sided("image") == (
        "a net similarity needs positive and negative reference images (has 3 positive, 0 negative)"
    )
    assert a.one_sided("text") is None


def test_prompts_need_both_polarities(ws):
    edit(
        assessment_file(ws),
        'negative = ["few pink carbides, mostly green matrix", "carbides dissolved in the bead"]',
        "",
    )
    with pytest.raises(RulesError, match="both positive and negative texts"):
        compile_rules(ws.rules_dir)


def test_assessment_without_evidence(ws):
    path = assessment_file(ws)
    text = path.read_text()
    path.write_text(text[: text.index("[prompts]")])
    for polarity in ("positive", "negative"):
        for ref in (ws.rules_dir / "references/EA-5" / polarity).iterdir():
            ref.unlink()
    with pytest.raises(RulesError, match="has no evidence"):
        compile_rules(ws.rules_dir)


def test_cycle_in_gates(ws):
    tree = ws.rules_dir / "tree.toml"
    tree.write_text(
        tree.read_text() + '\n[gates.a]\nrule = "all"\nparent = "b"\n'
        '[gates.b]\nrule = "all"\nparent = "a"\n'
    )
    with pytest.raises(RulesError, match="cycle"):
        compile_rules(ws.rules_dir)


def test_precondition_on_own_descendant_is_a_cycle(ws):
    tree = ws.rules_dir / "tree.toml"
    tree.write_text(tree.read_text() + '\n[[gates.qualification.preconditions]]\nnode = "EA-5"\n')
    with pytest.raises(RulesError, match="cycle"):
        compile_rules(ws.rules_dir)


def test_two_roots(ws):
    tree = ws.rules_dir / "tree.toml"
    tree.write_text(tree.read_text() + '\n[gates.orphan]\nrule = "any"\n')
    with pytest.raises(RulesError, match="exactly one gate must have no parent"):
        compile_rules(ws.rules_dir)


def test_k_of_n_needs_enough_children(ws):
    tree = ws.rules_dir / "tree.toml"
    edit(tree, 'rule = "all"', 'rule = "k_of_n"\nk = 3')
    with pytest.raises(RulesError, match="needs k=3 of only 1 children"):
        compile_rules(ws.rules_dir)


def test_unknown_quantity_and_wrong_unit_are_caught_by_the_engine_check(ws):
    path = assessment_file(ws)
    rule = (
        '[[measurements]]\nquantity = "carbide_share"\nop = ">="\nlimit = 0.3\nunit = "fraction"\n'
    )
    path.write_text(path.read_text() + rule)
    with pytest.raises(RulesError, match="unknown quantity 'carbide_share'"):
        compile_workspace(ws)
    path.write_text(
        path.read_text()
        .replace("carbide_share", "carbide_fraction")
        .replace('unit = "fraction"', 'unit = "%"')
    )
    with pytest.raises(RulesError, match="measured in 'fraction', not '%'"):
        compile_workspace(ws)

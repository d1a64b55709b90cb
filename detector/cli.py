"""The `detector` command line: parse, call one library function, exit cleanly.

Only this module imports typer. Heavy libraries (pyod, lightgbm, mlflow) are imported
inside the library functions the commands call, so `detector --help` stays instant.
"""

from __future__ import annotations

import inspect
import re
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from detector.errors import DetectorError
from detector.settings import DEFAULT_EXPERIMENT, DEFAULT_MODEL_NAME, DEFAULT_MODEL_URI

app = typer.Typer(
    help="Find export-controlled AI chips diverted to prohibited end users.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """Find export-controlled AI chips diverted to prohibited end users.

    Score shipment and lease records, explain one record, train and promote models,
    and write the scheduled risk report. Data formats: DATA_CONTRACT.md.
    """


def _fail(exc: DetectorError) -> None:
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(exc.exit_code)


@app.command()
def validate(
    dataset_dir: Annotated[Path, typer.Argument(help="Dataset directory (DATA_CONTRACT.md).")],
    quarantine: Annotated[Optional[Path], typer.Option(
        help="Write the rows that fail to this directory, one CSV per table, "
             "with a `problem` column.")] = None,
) -> None:
    """Check a dataset against the data contract; print every problem.

    Exit 0 only if every row passes (warnings allowed), 1 otherwise.
    """
    from detector.tables import FatalInputError, read_dataset, write_quarantine

    try:
        dataset = read_dataset(dataset_dir, allow_errors=True)
    except FatalInputError as exc:
        typer.echo(exc.report.text(), err=True)
        typer.echo(f"{dataset_dir}: INVALID ({len(exc.report.errors)} problem(s); "
                   "the dataset could not be read)", err=True)
        raise typer.Exit(1)
    except DetectorError as exc:
        _fail(exc)
    report = dataset.report
    if report.issues:
        typer.echo(report.text(), err=True)
    counts = (f"{dataset.shipments.height} shipments, {dataset.leases.height} leases, "
              f"{dataset.parties.height} parties, {dataset.labels.height} labels")
    if quarantine is not None and dataset.quarantined:
        written = write_quarantine(dataset, quarantine)
        typer.echo(f"quarantined {dataset.quarantined_rows} row(s) to "
                   + ", ".join(str(p) for p in written), err=True)
    if report.ok:
        typer.echo(f"{dataset_dir}: OK ({counts}; {len(report.warnings)} warning(s))")
        return
    typer.echo(f"{dataset_dir}: INVALID ({len(report.errors)} problem(s), "
               f"{len(report.warnings)} warning(s); rows that pass: {counts})", err=True)
    raise typer.Exit(1)


HistoryOpt = Annotated[Optional[list[Path]], typer.Option(
    "--history", help="Earlier dataset used as context (repeatable); not scored.")]
ModelOpt = Annotated[Optional[str], typer.Option(
    "--model", help="models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID/PATH or a local "
                    f"bundle directory. Default: {DEFAULT_MODEL_URI}.")]
CapacityOpt = Annotated[str, typer.Option(
    help="Review capacity: how many records analysts can review, a count (250) or a share "
         "(1%).")]
ExploreOpt = Annotated[Optional[float], typer.Option(
    help="Share of the review queue chosen for learning rather than by risk (0 to 1): the "
         "records the model is least sure of, or finds unusual and unfamiliar. "
         "Default 0.1 (README: Inspection budget).")]
ScreeningOpt = Annotated[Optional[Path], typer.Option(
    "--screening-list", help="Screening list CSV/Parquet: the contract's shape or the US "
                             "Consolidated Screening List as downloaded.")]


ConfigOpt = Annotated[Optional[Path], typer.Option(
    help="Training settings (TOML), e.g. experiments/baseline.toml.")]
ExperimentOpt = Annotated[str, typer.Option(help="MLflow experiment name.")]
NameOpt = Annotated[str, typer.Option(help="Registered model name.")]
QuietOpt = Annotated[bool, typer.Option(
    "--quiet", "-q", help="No progress on stderr (warnings and notices still show).")]


def _notice(message: str) -> None:
    """Warnings and notices (such as the fallback): on stderr, even with --quiet."""
    typer.echo(message, err=True)


def _progress(command: str, quiet: bool):
    """Phases with counts and elapsed time on stderr: live when it is a terminal, plain
    timestamped lines otherwise, nothing with --quiet."""
    from detector.progress import Progress

    return Progress(quiet=quiet, command=command)


@app.command()
def train(
    dataset_dir: Annotated[Path, typer.Argument(help="Dataset with a labels table.")],
    history: HistoryOpt = None,
    config: ConfigOpt = None,
    experiment: ExperimentOpt = DEFAULT_EXPERIMENT,
    name: NameOpt = DEFAULT_MODEL_NAME,
    screening_list: ScreeningOpt = None,
    engine: Annotated[str, typer.Option(
        help="local, or dask: train LightGBM with lightgbm.dask on a dask.distributed "
             "cluster.")] = "local",
    scheduler: Annotated[Optional[str], typer.Option(
        help="Dask scheduler address (with --engine dask); default: a LocalCluster.")] = None,
    quiet: QuietOpt = False,
) -> None:
    """Train on the labelled records, log the run to MLflow, register a model version.

    Labelled records are ordered by date: the model is fitted on the oldest part, early
    stopping and calibration use the next part, metrics come from the latest part. The
    first version of a name becomes `champion`.
    """
    from detector.training import train as run_training

    with _progress("train", quiet) as progress:
        try:
            result = run_training(dataset_dir, history or [], config_path=config,
                                  experiment=experiment, model_name=name,
                                  screening_list=screening_list, engine=engine,
                                  scheduler=scheduler, log=_notice, progress=progress)
        except DetectorError as exc:
            _fail(exc)
        progress.done(f"trained {result.name} version {result.version}")
    m = result.metrics
    typer.echo(f"registered {result.name} version {result.version}"
               + (" (champion)" if result.champion else "")
               + f"; run {result.run_id} in experiment {result.experiment!r}")
    typer.echo(f"test slice ({int(m['records'])} labelled records, {int(m['positives'])} "
               f"confirmed, {result.slices['test']['from']} to {result.slices['test']['to']}): "
               f"PR-AUC {m['pr_auc']:.3f}, precision@1% {m['precision_at_1pct']:.3f}"
               f"{_ceiling(m, 'precision_at_1pct')}, recall@5% {m['recall_at_5pct']:.3f}"
               f"{_ceiling(m, 'recall_at_5pct')}, Brier {m['brier']:.4f}")
    typer.echo("reliability (test slice):")
    for r in result.reliability.iter_rows(named=True):
        typer.echo(f"  {r['band_low']:.1f}-{r['band_high']:.1f}: {r['records']:>6} records, "
                   f"predicted {r['mean_predicted']:.3f}, observed {r['observed_rate']:.3f}")


def _ceiling(metrics: dict, key: str) -> str:
    value = metrics.get(f"{key}.ceiling")
    return f" (ceiling {value:.3f})" if value is not None and value < 1 else ""


@app.command()
def promote(
    name: NameOpt = DEFAULT_MODEL_NAME,
    version: Annotated[Optional[int], typer.Option(help="Version to make champion.")] = None,
    run: Annotated[Optional[str], typer.Option(help="Run whose version to make champion.")] = None,
    data: Annotated[Optional[Path], typer.Option(
        help="Labelled dataset to compare on. Default: the dataset the version was trained "
             "on (its latest, held-out labels).")] = None,
    history: HistoryOpt = None,
    force: Annotated[bool, typer.Option(
        "--force", help="Promote without comparing (recorded in MLflow).")] = False,
    reason: Annotated[Optional[str], typer.Option(
        help="Why (recorded with the promotion).")] = None,
    rollback: Annotated[bool, typer.Option(
        "--rollback", help="Point champion back at the previous champion.")] = False,
    capacity: Annotated[str, typer.Option(
        help="Review capacity for the comparison: a count or a share of the compared "
             "records.")] = "5%",
    bootstrap: Annotated[int, typer.Option(help="Bootstrap resamples.")] = 1000,
    screening_list: ScreeningOpt = None,
) -> None:
    """Point the `champion` alias at a version, after comparing it with the champion.

    The challenger and the current champion score the same labelled records (those
    neither learned from; `detector compare`). A challenger worse beyond noise is refused
    (exit 1) with the figures; `--force` promotes without comparing and is recorded.
    Roll back with `detector promote --rollback` (or `--version N` of the earlier one).
    """
    from detector.compare import promote as do_promote

    if (version is not None or run is not None) if rollback else (version is None) == (run is None):
        typer.echo("error: give exactly one of --version N or --run RUN_ID (or --rollback "
                   "alone)", err=True)
        raise typer.Exit(2)
    try:
        result = do_promote(name, version, run, data=data, history_dirs=history or [],
                            force=force, reason=reason, rollback=rollback, capacity=capacity,
                            n_boot=bootstrap, screening_list=screening_list, log=_notice)
    except DetectorError as exc:
        _fail(exc)
    if result.comparison is not None:
        typer.echo(result.comparison.text())
        typer.echo("")
    if result.note:
        typer.echo(result.note, err=True)
    typer.echo(f"{name}@champion -> version {result.version}"
               + (f" (was {result.previous}; {result.how})" if result.previous is not None
                  and result.previous != result.version else ""))


@app.command()
def drift(
    dataset_dir: Annotated[Path, typer.Argument(help="Dataset (batch) to check.")],
    history: HistoryOpt = None,
    model: ModelOpt = None,
    screening_list: ScreeningOpt = None,
) -> None:
    """How the batch differs from the model's training data: PSI per model input and of
    the risk score, shares of never-seen destinations, HS codes, chip-less description
    wordings and parties. Alerts (marked !) use the thresholds stored with the model
    (training config \\[drift]). Exit 0, alerts listed; they are also logged to MLflow."""
    from detector.scoring import drift as run_drift

    try:
        report = run_drift(dataset_dir, history or [], model_uri=model,
                           screening_list=screening_list, log=_notice)
    except DetectorError as exc:
        _fail(exc)
    typer.echo(report.table())


@app.command()
def retrain(
    dataset_dir: Annotated[Path, typer.Argument(help="Dataset with the latest labels.")],
    history: HistoryOpt = None,
    config: ConfigOpt = None,
    experiment: ExperimentOpt = DEFAULT_EXPERIMENT,
    name: NameOpt = DEFAULT_MODEL_NAME,
    promote_when: Annotated[str, typer.Option(
        help="better: only when better beyond noise; not-worse: also when no difference "
             "beyond noise.")] = "better",
    capacity: Annotated[str, typer.Option(
        help="Review capacity for the comparison.")] = "5%",
    bootstrap: Annotated[int, typer.Option(help="Bootstrap resamples.")] = 1000,
    screening_list: ScreeningOpt = None,
) -> None:
    """Train on the latest labels and stored decisions, compare with the champion, promote
    only if better.

    Exit 0: the new version is champion; 4: registered, champion kept (not better beyond
    noise); 5: registered, champion kept (too few labelled records to decide); 1, 2, 3 as
    for every command.
    """
    from detector.retrain import retrain as run_retrain

    try:
        result = run_retrain(dataset_dir, history or [], config_path=config,
                             experiment=experiment, name=name, screening_list=screening_list,
                             promote_when=promote_when, capacity=capacity, n_boot=bootstrap,
                             log=_notice)
    except DetectorError as exc:
        _fail(exc)
    if result.comparison is not None:
        typer.echo(result.comparison.text())
        typer.echo("")
    typer.echo(result.summary)
    raise typer.Exit(result.exit_code)


@app.command()
def compare(
    dataset_dir: Annotated[Path, typer.Argument(help="Labelled dataset to compare on.")],
    models: Annotated[tuple[str, str], typer.Option(
        "--models", help="Two models A B: version numbers, aliases (champion), run ids, "
                         "models:/ or runs:/ URIs, or bundle directories.")],
    history: HistoryOpt = None,
    name: NameOpt = DEFAULT_MODEL_NAME,
    capacity: Annotated[str, typer.Option(
        help="Review capacity: a count, or a share of the compared records.")] = "5%",
    bootstrap: Annotated[int, typer.Option(help="Bootstrap resamples.")] = 1000,
    all_labels: Annotated[bool, typer.Option(
        "--all-labels", help="Use every labelled record, not only those neither model "
                             "learned from.")] = False,
    screening_list: ScreeningOpt = None,
) -> None:
    """Two models on the same labelled records: PR-AUC, precision and recall at the
    capacity and per scheme, with bootstrap 90% intervals, and the records they disagree
    on most. Logged to MLflow (experiment NAME-comparisons).

    By default only the labelled records neither model learned from are used (dated or
    decided after both models' training cut-off, which each model stores). The verdict
    says when there are too few to decide (fewer than 30 confirmed diversions) or no
    difference beyond noise. Exit 0 whatever the verdict.
    """
    from detector.compare import compare_models

    try:
        result = compare_models(dataset_dir, models[0], models[1], history or [], name=name,
                                capacity=capacity, n_boot=bootstrap, all_labels=all_labels,
                                screening_list=screening_list, log=_notice)
    except DetectorError as exc:
        _fail(exc)
    typer.echo(result.text())


@app.command()
def models(
    name: NameOpt = DEFAULT_MODEL_NAME,
) -> None:
    """List registered versions with their key metrics and which one is `champion`.

    test / pos: labelled records and confirmed diversions in the held-out test slice the
    metrics come from; R@5%max: the highest recall@5% that slice allows (5% of its records
    divided by its positives, at most 1).
    """
    from detector.tracking import interrupted_run_rows, model_versions

    try:
        rows = model_versions(name)
        interrupted = interrupted_run_rows()
    except DetectorError as exc:
        _fail(exc)
    for run in interrupted:  # RUNNING in MLflow, but the process that ran it is gone
        typer.echo(f"failed   run {run['run_id']} started {run['started']}: interrupted (its "
                   "process was killed); the next `detector train` closes it as FAILED")
    if not rows:
        typer.echo(f"no versions of {name!r} registered yet (train one with `detector train`)")
        return
    typer.echo(f"{'version':>7}  {'champion':<8}  {'test':>6}  {'pos':>5}  {'PR-AUC':>6}  "
               f"{'P@1%':>6}  {'R@5%':>6}  {'R@5%max':>7}  {'Brier':>6}  {'config':<28} run")
    for r in rows:
        m = r["metrics"]

        def fmt(key, width=6):
            v = m.get(key)
            return f"{v:{width}.3f}" if v is not None else " " * (width - 1) + "-"

        def count(key, width):
            v = m.get(key)  # MLflow stores every metric as a float: counts print as integers
            return f"{int(v):>{width}d}" if v is not None else " " * (width - 1) + "-"
        typer.echo(f"{r['version']:>7}  {'*' if r['champion'] else '':<8}  "
                   f"{count('records', 6)}  {count('positives', 5)}  {fmt('pr_auc')}  "
                   f"{fmt('precision_at_1pct')}  {fmt('recall_at_5pct')}  "
                   f"{fmt('recall_at_5pct.ceiling', 7)}  {fmt('brier')}  "
                   f"{r['tags'].get('config', '-')[-28:]:<28} {r['run_id']}")



@app.command()
def score(
    dataset_dir: Annotated[Path, typer.Argument(help="Dataset to score.")],
    out: Annotated[Path, typer.Option(help="Scores file: .csv or .parquet.")],
    history: HistoryOpt = None,
    model: ModelOpt = None,
    quarantine: Annotated[Optional[Path], typer.Option(
        help="Write rows that fail validation here and score the rest.")] = None,
    top: Annotated[int, typer.Option(help="Rows printed, and given full reasons.")] = 1000,
    screening_list: ScreeningOpt = None,
    engine: Annotated[str, typer.Option(
        help="local, or dask: model layers per partition on a dask.distributed cluster.")
    ] = "local",
    scheduler: Annotated[Optional[str], typer.Option(
        help="Dask scheduler address (with --engine dask); default: a LocalCluster.")] = None,
    chunk_rows: Annotated[Optional[int], typer.Option(
        help="Shipments whose features are built and scored at once (memory follows it); "
             "default 1,000,000. Results do not depend on it.")] = None,
    capacity: CapacityOpt = "1%",
    explore: ExploreOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Score every shipment and lease; write the scores table; print the top N with reasons.

    The review queue (--capacity records, a share --explore of them chosen for learning)
    is marked in the scores' queue_reason column: risk or explore.
    """
    from detector.queue import DEFAULT_EXPLORE
    from detector.scoring import score as run_scoring
    from detector.scoring import top_table

    with _progress("score", quiet) as progress:
        try:
            scored = run_scoring(dataset_dir, out, history or [], model_uri=model,
                                 quarantine=quarantine, top=top, screening_list=screening_list,
                                 engine=engine, scheduler=scheduler, chunk_rows=chunk_rows,
                                 capacity=capacity,
                                 explore=DEFAULT_EXPLORE if explore is None else explore,
                                 log=_notice, progress=progress)
        except DetectorError as exc:
            _fail(exc)
        progress.done(f"scored {scored.frame.height:,} records")
    typer.echo(top_table(scored, top))
    quarantined = scored.quarantined_rows
    if quarantined:
        typer.echo(f"quarantined {quarantined} row(s) to {quarantine}", err=True)
    typer.echo(f"wrote {scored.frame.height} scores to {out} (model {scored.model.label})",
               err=True)


@app.command()
def explain(
    dataset_dir: Annotated[Path, typer.Argument(help="Dataset holding the record.")],
    record_id: Annotated[str, typer.Argument(help="shipment_id or lease_id.")],
    kind: Annotated[Optional[str], typer.Option(help="shipment or lease.")] = None,
    history: HistoryOpt = None,
    model: ModelOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON (every feature).")] = False,
    show_all: Annotated[bool, typer.Option(
        "--all", help="List every feature, not only those that drive the score.")] = False,
    scores: Annotated[Optional[Path], typer.Option(
        help="The batch's scores table (from `detector score`), to show the record's rank.")
    ] = None,
    screening_list: ScreeningOpt = None,
) -> None:
    """Why one record scored as it did: likely scheme, reasons, rule hits, and the features
    that drive its score (--all: every feature's value and contribution).

    With a model only the records this record's features read are built and scored, so
    one record takes about a second; its rank in the batch comes from --scores.
    """
    import json

    from detector.reasons import explain_text
    from detector.scoring import explain as run_explain

    try:
        explanation = run_explain(dataset_dir, record_id, kind, history or [], model_uri=model,
                                  screening_list=screening_list, scores=scores, log=_notice)
    except DetectorError as exc:
        _fail(exc)
    if json_out:
        typer.echo(json.dumps(explanation, indent=2, default=str))
    else:
        typer.echo(explain_text(explanation, show_all=show_all))


@app.command("import")
def import_(
    paths: Annotated[list[Path], typer.Argument(
        help="SOURCE... OUT_DIR: the export's CSV or Parquet files, then the dataset directory "
             "to write.", metavar="SOURCE... OUT_DIR")],
    mapping: Annotated[Path, typer.Option(
        help="Column mapping (TOML), e.g. the shipped data/mappings/kcs.toml.")],
    quiet: QuietOpt = False,
) -> None:
    """Turn a real export into a contract dataset through a column mapping.

    Renames, constants, unit and currency conversion and date formats come from the
    mapping; label columns become the `labels` table; every other source column is kept
    as an extra column. Any problem is named (mapping key, file, column, rows, values),
    exit 1, and nothing is written.
    """
    from detector.importer import import_data

    if len(paths) < 2:
        typer.echo("error: give SOURCE... OUT_DIR (at least one source file and the output "
                   "directory)", err=True)
        raise typer.Exit(2)
    *sources, out_dir = paths
    with _progress("import", quiet) as progress:
        try:
            result = import_data(sources, out_dir, mapping, log=_notice, progress=progress)
        except DetectorError as exc:
            _fail(exc)
        progress.done(f"imported {result.records:,} records")
    for warning in result.warnings:
        typer.echo(f"warning: {warning}", err=True)
    typer.echo(f"wrote {result.out_dir}: {result.records} {result.record_table} from "
               f"{len(result.files)} file(s), {result.labels} labels ({result.confirmed} "
               f"confirmed), {len(result.extra_columns)} extra column(s)"
               + (f": {', '.join(result.extra_columns)}" if result.extra_columns else ""))


@app.command()
def simulate(
    out_dir: Annotated[Path, typer.Argument(help="Directory to write the dataset into.")],
    seed: Annotated[int, typer.Option(help="Random seed; same seed and arguments, same bytes.")] = 0,
    shipments: Annotated[int, typer.Option(help="Number of shipment rows.")] = 10000,
    start: Annotated[str, typer.Option(help="First day, YYYY-MM-DD.")] = "2024-01-01",
    months: Annotated[int, typer.Option(help="Number of months simulated.")] = 24,
    late_scheme: Annotated[Optional[str], typer.Option(
        help="A typology that appears only from --late-from-month on (a scheme the early "
             "months never show; benchmarks/bench_loop.py).")] = None,
    late_from_month: Annotated[int, typer.Option(
        help="First month of --late-scheme (1 = the first month).")] = 7,
) -> None:
    """Write a synthetic labelled dataset, screening_list.csv and truth.parquet."""
    from datetime import date

    from detector.errors import UsageError
    from detector.simulation import simulate as run_simulate

    try:
        try:
            first_day = date.fromisoformat(start)
        except ValueError:
            raise UsageError(f"--start: expected a date YYYY-MM-DD, got {start!r}") from None
        summary = run_simulate(out_dir, seed=seed, shipments=shipments, start=first_day,
                               months=months, late_scheme=late_scheme,
                               late_from_month=late_from_month,
                               log=lambda m: typer.echo(m, err=True))
    except DetectorError as exc:
        _fail(exc)
    typer.echo(f"wrote {out_dir}: {summary.shipments} shipments "
               f"({summary.diversion_shipments} diverted), {summary.leases} leases "
               f"({summary.diversion_leases} diverted), {summary.parties} parties, "
               f"{summary.labels} labels ({summary.confirmed} confirmed, {summary.cleared} "
               f"cleared), {summary.screening_entries} screening-list entries")


@app.command()
def report(
    dataset_dir: Annotated[Path, typer.Argument(help="Dataset to report on.")],
    out: Annotated[Path, typer.Option(help="Output file: .html, or .pdf for a PDF.")],
    history: HistoryOpt = None,
    model: ModelOpt = None,
    period: Annotated[Optional[str], typer.Option(
        help="Month to report, YYYY-MM. Default: the latest month in the data.")] = None,
    capacity: CapacityOpt = "1%",
    explore: ExploreOpt = None,
    screening_list: ScreeningOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """The scheduled risk report: one self-contained HTML file, or a PDF."""
    from detector.queue import DEFAULT_EXPLORE
    from detector.report import generate_report

    with _progress("report", quiet) as progress:
        try:
            path = generate_report(dataset_dir, out, history or [], model_uri=model,
                                   period=period, capacity=capacity,
                                   explore=DEFAULT_EXPLORE if explore is None else explore,
                                   screening_list=screening_list, log=_notice,
                                   progress=progress)
        except DetectorError as exc:
            _fail(exc)
        progress.done(f"wrote {path}")
    typer.echo(f"wrote {path}")


AnalystOpt = Annotated[Optional[str], typer.Option(
    help="Analyst name stored with each decision. Default: $DETECTOR_ANALYST.")]


@app.command()
def review(
    dataset_dir: Annotated[Path, typer.Argument(help="Dataset to review.")],
    scores: Annotated[Optional[Path], typer.Option(
        help="Scores file from `detector score`: its scores and queue are shown as written "
             "(--capacity and --explore apply only to a file without a queue). Default: "
             "score the dataset when the page starts.")] = None,
    history: HistoryOpt = None,
    model: ModelOpt = None,
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8765,
    host: Annotated[Optional[str], typer.Option(
        help="Address to bind. Default 127.0.0.1 (this machine only); any other address "
             "exposes the page to the network.")] = None,
    analyst: AnalystOpt = None,
    capacity: CapacityOpt = "1%",
    explore: ExploreOpt = None,
    screening_list: ScreeningOpt = None,
) -> None:
    """Serve the local review page: ranked queue, case pages, decisions.

    Decisions go to the decision store under $DETECTOR_HOME: the case memory of the
    next scoring counts them for later records, and the next `detector train` learns
    from them.
    """
    from detector.queue import DEFAULT_EXPLORE
    from detector.review import serve

    if host is not None and host not in ("127.0.0.1", "localhost", "::1"):
        typer.echo(f"warning: --host {host}: the review page (case data and decisions) is "
                   "reachable from the network at that address; it has no login", err=True)
    try:
        serve(dataset_dir, scores_path=scores, history_dirs=history or [], model_uri=model,
              host=host or "127.0.0.1", port=port, analyst=analyst, capacity=capacity,
              explore=DEFAULT_EXPLORE if explore is None else explore,
              screening_list=screening_list, log=_notice)
    except DetectorError as exc:
        _fail(exc)


decisions_app = typer.Typer(help="The stored analyst decisions (the decision store under "
                                 "$DETECTOR_HOME).", no_args_is_help=True)
app.add_typer(decisions_app, name="decisions")


@decisions_app.command("export")
def decisions_export(
    out: Annotated[Path, typer.Option(help="Labels file: .csv or .parquet.")],
) -> None:
    """Write the stored decisions as the contract's labels table (latest per record)."""
    from detector.decisions import export_labels

    try:
        path, rows = export_labels(out)
    except DetectorError as exc:
        _fail(exc)
    typer.echo(f"wrote {rows} labels to {path}")


@decisions_app.command("import")
def decisions_import(
    file: Annotated[Path, typer.Argument(help="A labels table (CSV or Parquet).")],
    analyst: AnalystOpt = None,
) -> None:
    """Store decisions made elsewhere (a labels table; rows already stored are skipped)."""
    from detector.decisions import import_labels

    try:
        result = import_labels(file, analyst=analyst)
    except DetectorError as exc:
        _fail(exc)
    typer.echo(f"stored {result.stored} decisions from {file} ({result.rows} rows; "
               f"{result.skipped_same} already stored)")


@app.command()
def adjudicate(
    record_id: Annotated[str, typer.Argument(help="shipment_id or lease_id.")],
    label: Annotated[int, typer.Option(help="1 = confirmed diversion, 0 = cleared.")],
    typology: Annotated[Optional[str], typer.Option(
        help="The scheme of a confirmed diversion (e.g. transshipment, or free text).")] = None,
    note: Annotated[Optional[str], typer.Option(help="Why.")] = None,
    kind: Annotated[Optional[str], typer.Option(help="shipment or lease (default shipment, "
                                                     "or the kind already stored).")] = None,
    analyst: AnalystOpt = None,
) -> None:
    """Store one decision from the command line, like one made on the review page."""
    from detector.decisions import DECISION_TEXT
    from detector.decisions import adjudicate as store_decision

    try:
        d = store_decision(record_id, label, record_kind=kind, typology=typology, note=note,
                           analyst=analyst)
    except DetectorError as exc:
        _fail(exc)
    typer.echo(f"stored: {d.record_kind} {d.record_id} {DECISION_TEXT[d.decision]}"
               + (f" ({d.typology})" if d.typology else "") + f" by {d.analyst}")


def _reflow_help(typer_app: typer.Typer) -> None:
    """Each help paragraph after the first reads as one paragraph in `--help`: typer's rich
    mode keeps the docstrings' line breaks there, which cut sentences mid-line."""
    infos = [*typer_app.registered_commands, typer_app.registered_callback]
    for info in filter(None, infos):
        text = info.help or inspect.getdoc(info.callback) or ""
        first, *rest = text.split("\n\n")
        info.help = "\n\n".join([first, *(re.sub(r"\s*\n\s*", " ", p) for p in rest)])
    for group in typer_app.registered_groups:
        _reflow_help(group.typer_instance)


_reflow_help(app)


def main() -> None:
    try:
        app()
    except DetectorError as exc:  # a library error that escaped a command
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except Exception as exc:  # the machine failed where no command expected it: one line
        from detector.files import is_os_failure, os_failure

        if not is_os_failure(exc):
            raise
        failure = os_failure(exc, getattr(exc, "filename", None) or "detector", "complete")
        print(f"error: {failure}", file=sys.stderr)
        sys.exit(failure.exit_code)

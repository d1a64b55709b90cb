"""The `detector` command line: parse, call one library function, exit cleanly.

Only this module imports typer. Heavy libraries (pyod, lightgbm, mlflow) are imported
inside the library functions the commands call, so `detector --help` stays instant.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from detector.errors import DetectorError

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
    from detector.contract import FatalInputError, read_dataset, write_quarantine

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


def main() -> None:
    try:
        app()
    except DetectorError as exc:  # a library error that escaped a command
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)

"""Issue #15: long commands show their phases with counts and elapsed time on stderr
(plain timestamped lines when stderr is not a terminal, a live display when it is);
--quiet silences the progress but not the notices."""

from __future__ import annotations

import io
import re

from pipeline_fixtures import cli

from detector.progress import Progress

STAMP = r"\[\d\d:\d\d:\d\d\] "


def test_plain_lines_give_phase_counts_and_elapsed_time():
    stream = io.StringIO()
    progress = Progress(stream=stream, command="score")
    assert not progress.live  # a StringIO is not a terminal
    with progress.phase("score", total=3, unit="parts") as phase:
        for _ in range(3):
            phase.advance(1, "10 records")
        phase.finish("30 records ranked")
    progress.done("scored 30 records")
    lines = stream.getvalue().splitlines()
    assert re.fullmatch(STAMP + r"score: score \(3 parts\) \.\.\.", lines[0])
    assert re.fullmatch(STAMP + r"score: score: 2 of 3 parts \(10 records\), \d+\.\d s", lines[2])
    assert re.fullmatch(STAMP + r"score: score: 30 records ranked in \d+\.\d s", lines[4])
    assert re.fullmatch(STAMP + r"score: scored 30 records in \d+\.\d s", lines[5])


def test_quiet_shows_nothing_and_a_terminal_gets_a_live_display():
    quiet = io.StringIO()
    with Progress(stream=quiet, quiet=True) as progress, progress.phase("read", 5) as phase:
        phase.advance(5)
    assert quiet.getvalue() == ""
    live = io.StringIO()
    with Progress(stream=live, live=True) as progress, progress.phase("features", 2) as phase:
        phase.advance(2)
    text = live.getvalue()
    assert "features" in text and "\x1b[" in text  # drawn with terminal control codes
    assert not re.search(STAMP, text)


def test_cli_score_prints_phases_and_quiet_keeps_only_notices(world, trained, empty_home,
                                                                tmp_path):
    out = tmp_path / "scores.csv"
    shown = cli(["score", world, "--out", out, "--top", "3", "--chunk-rows", "4000"],
                trained.home)
    assert shown.exit_code == 0, shown.output
    err = shown.stderr
    assert re.search(STAMP + r"score: read .*: 10,000 shipments, \d[\d,]* leases", err)
    # the leases and three parts of at most 4,000 shipments, each reported as it is done
    assert re.search(STAMP + r"score: score with chip-diversion/1: 3 of 4 parts "
                     r"\(4,000 records\), \d+\.\d s", err)
    assert re.search(STAMP + r"score: scored \d[\d,]* records in \d+\.\d s", err)
    assert "score:" not in shown.stdout  # results stay on stdout, progress on stderr

    quiet = cli(["score", world, "--out", tmp_path / "q.csv", "--top", "3", "--quiet"],
                empty_home)
    assert quiet.exit_code == 0, quiet.output
    assert not re.search(STAMP, quiet.stderr)
    assert "rules + unsupervised" in quiet.stderr  # the fallback notice is not progress

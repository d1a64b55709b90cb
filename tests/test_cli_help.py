"""Every command's --help shows its whole docstring and option help: rich markup must not eat words
(an unescaped "[drift]" in a docstring rendered as "(training config )")."""
import re

import typer.main
from typer.testing import CliRunner

from detector.cli import app


def _commands(group, prefix=()):
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            yield from _commands(command, prefix + (name,))
        else:
            yield prefix + (name,), command


def _words(text: str) -> str:
    return re.sub(r"\s+", " ", text.replace("\\[", "[")).strip()


def test_every_command_help_shows_its_whole_docstring():
    runner = CliRunner()
    root = typer.main.get_command(app)
    checked = 0
    for path, command in _commands(root):
        doc = command.help or ""
        result = runner.invoke(app, [*path, "--help"], terminal_width=200)
        assert result.exit_code == 0, (path, result.output)
        shown = _words(result.output.replace("│", " "))
        for paragraph in doc.split("\n\n"):
            assert _words(paragraph) in shown, (path, _words(paragraph))
        for param in command.params:
            if getattr(param, "help", None):
                assert _words(param.help) in shown, (path, param.name, param.help)
        checked += 1
    assert checked >= 10


def test_help_paragraphs_are_not_cut_at_the_docstring_line_breaks():
    """At a wide terminal a later paragraph is one line: typer's rich mode kept the
    docstring's line breaks there ("..., so" / "one record takes ...")."""
    runner = CliRunner()
    result = runner.invoke(app, ["explain", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    lines = [line.strip() for line in result.output.splitlines()]
    assert any(line.startswith("With a model only") and line.endswith("comes from --scores.")
               for line in lines), result.output

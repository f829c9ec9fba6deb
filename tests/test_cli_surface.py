"""`xgen --help` lists only commands that exist and run: every group it shows holds commands, and every command it
names parses, imports its code and (for the tools) runs."""

from __future__ import annotations

import importlib
import json
import re

import pytest

from xgen_core.cli import GROUPS, main
from xgen_core.stages import STAGES


def help_text(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as done:
        main([*argv, "--help"])
    assert done.value.code == 0
    return " ".join(capsys.readouterr().out.split())


def listed_commands(capsys) -> dict[str, list[str]]:
    """Group -> the commands its line of `xgen --help` names."""
    top = help_text(capsys)
    listed = {}
    for group, description in GROUPS.items():
        match = re.search(rf"\b{group} {re.escape(description)}: ([a-z0-9-]+(?:, [a-z0-9-]+)*)", top)
        if match:
            listed[group] = match.group(1).split(", ")
        else:
            assert f" {group} " not in top.split("groups: GROUP", 1)[1], f"{group} is listed without its commands"
    return listed


def test_every_group_shown_holds_the_commands_its_help_names(capsys):
    listed = listed_commands(capsys)
    assert {"data", "train", "eval", "model", "pipeline", "config"} <= set(listed)
    for group, commands in listed.items():
        group_help = help_text(capsys, group)
        for command in commands:
            assert re.search(rf"\b{command}\b", group_help.split("commands: COMMAND", 1)[1])
            help_text(capsys, group, command)


def test_every_stage_command_listed_reaches_its_function(capsys):
    listed = listed_commands(capsys)
    for stage in STAGES:
        assert stage.command in listed[stage.group]
        module, _, function = stage.fn.partition(":")
        assert callable(getattr(importlib.import_module(module), function))


def test_the_tools_listed_run(capsys, tmp_path):
    listed = listed_commands(capsys)
    stage_commands = {stage.command for stage in STAGES}
    tools = {(group, command) for group, commands in listed.items() for command in commands} - {
        (stage.group, stage.command) for stage in STAGES
    }
    assert {("config", "show"), ("pipeline", "run"), ("pipeline", "stages"), ("model", "info"),
            ("eval", "run-code")} <= tools
    main(["config", "show", "--json", "seed=3"])
    assert json.loads(capsys.readouterr().out)["seed"] == 3
    main(["pipeline", "stages", "--json"])
    assert {row["name"].replace("_", "-") for row in json.loads(capsys.readouterr().out)} == stage_commands
    main(["model", "info", "--preset", "micro", "--json"])
    assert json.loads(capsys.readouterr().out)["params_total"] > 0
    (tmp_path / "code.py").write_text("def add(a, b):\n    return a + b\n")
    (tmp_path / "tests.py").write_text("assert add(2, 3) == 5\n")
    main(["eval", "run-code", "--code", str(tmp_path / "code.py"), "--tests", str(tmp_path / "tests.py"), "--json"])
    assert json.loads(capsys.readouterr().out)["status"] == "passed"
    main(["pipeline", "run", "--root", str(tmp_path), "--until", "sample_corpus", *SMALL_CORPUS])
    assert re.search(r"sample_corpus +built ", capsys.readouterr().out)


SMALL_CORPUS = ["sample_corpus.code_docs=3", "sample_corpus.prose_docs=3", "sample_corpus.math_docs=3",
                "sample_corpus.web_docs=3"]

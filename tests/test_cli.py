"""The xgen command: groups, config show, one-line errors, --debug tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from xgen_core.cli import main
from xgen_core.stages import STAGES

XGEN = str(Path(sys.executable).parent / "xgen")


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([XGEN, *args], capture_output=True, text=True, timeout=120)


def test_help_lists_the_groups():
    out = run_cli("--help").stdout
    for group in ("data", "train", "model", "pipeline", "config"):
        assert group in out


def test_every_stage_is_a_command_in_its_group(capsys):
    for stage in STAGES:
        with pytest.raises(SystemExit) as done:
            main([stage.group, stage.command, "--help"])
        assert done.value.code == 0
        assert stage.description.split(";")[0] in " ".join(capsys.readouterr().out.split())


def test_config_show_json_prints_every_section(capsys):
    main(["config", "show", "--profile", "tiny", "--json", "seed=5"])
    shown = json.loads(capsys.readouterr().out)
    assert shown["seed"] == 5 and shown["profile"] == "tiny"
    assert {"spark", "storage", "sample_corpus", "ingest"} <= set(shown)


def test_errors_are_one_line_and_debug_shows_the_traceback():
    plain = run_cli("config", "show", "ingest.nope=1")
    assert plain.returncode == 2
    assert plain.stderr.strip().splitlines() == [
        "error: unknown config key 'ingest.nope'; allowed here: inputs, max_bad_fraction, max_text_chars, "
        "language_model, language_chars, default_snapshot, append_to"
    ]
    debug = run_cli("--debug", "config", "show", "ingest.nope=1")
    assert "Traceback" in debug.stderr


def test_missing_input_is_a_clear_error(tmp_path):
    result = run_cli("data", "ingest", "--input", str(tmp_path / "nothing-here"), "--output", str(tmp_path / "o"))
    assert result.returncode == 2
    assert "error: ingest: no input files found under" in result.stderr
    assert "Traceback" not in result.stderr


def test_sample_corpus_command_writes_where_told(tmp_path):
    out = tmp_path / "corpus"
    result = run_cli("data", "sample-corpus", "--out", str(out), "sample_corpus.code_docs=3", "sample_corpus.prose_docs=3",
                     "sample_corpus.math_docs=3", "sample_corpus.web_docs=3")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"sample_corpus: built {out}"
    assert (out / "_SUCCESS").exists() and (out / "wet").is_dir()
    again = run_cli("data", "sample-corpus", "--out", str(out), "sample_corpus.code_docs=3", "sample_corpus.prose_docs=3",
                    "sample_corpus.math_docs=3", "sample_corpus.web_docs=3")
    assert again.stdout.strip() == f"sample_corpus: reused {out}"
    assert "already committed" in again.stderr

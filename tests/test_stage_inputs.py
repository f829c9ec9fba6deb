"""`--input` fills every upstream it names (UPSTREAM=URI); a bare URI only where it cannot be ambiguous."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from xgen_core.errors import XgenError
from xgen_core.stages import resolve

XGEN = str(Path(sys.executable).parent / "xgen")


def artifact(tmp_path: Path, name: str) -> str:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "part-0.parquet").write_bytes(name.encode())
    return str(folder)


def test_a_stage_with_several_upstreams_reads_every_named_one(small_config, tmp_path):
    dedup, models = artifact(tmp_path, "my-dedup"), artifact(tmp_path, "my-models")
    resolved = resolve(small_config(), "signals", [f"dedup={dedup}", f"quality-train={models}"])
    assert resolved.inputs == {"dedup": dedup, "quality_train": models}
    assert set(resolved.input_ids) == {"dedup", "quality_train"} and resolved.external_inputs == []

    tokenizer, pack = artifact(tmp_path, "my-tokenizer"), artifact(tmp_path, "my-pack")
    assert resolve(small_config(), "pretrain", [f"pack={pack}", f"tokenizer={tokenizer}"]).inputs == {
        "tokenizer": tokenizer, "pack": pack,
    }


def test_upstreams_not_named_come_from_the_config(small_config, tmp_path):
    cfg = small_config()
    dedup = artifact(tmp_path, "my-dedup")
    resolved = resolve(cfg, "signals", [f"dedup={dedup}"])
    configured = resolve(cfg, "quality_train")
    assert resolved.inputs == {"dedup": dedup, "quality_train": configured.uri}
    assert resolved.input_ids["quality_train"] == configured.version


def test_a_named_input_changes_the_version_like_a_bare_one(small_config, tmp_path):
    cfg = small_config()
    signals = artifact(tmp_path, "my-signals")
    bare, named = resolve(cfg, "mixture", [signals]), resolve(cfg, "mixture", [f"signals={signals}"])
    assert bare.inputs == named.inputs == {"signals": signals} and bare.version == named.version
    assert bare.version != resolve(cfg, "mixture").version


@pytest.mark.parametrize(
    "stage, values, message",
    [
        ("signals", ["/data/dedup"],
         "signals: --input /data/dedup does not say which upstream it replaces; write --input UPSTREAM=URI "
         "(its upstreams: dedup, quality_train)"),
        ("pretrain", ["tokenizer=/t", "/data/pack"],
         "pretrain: --input /data/pack does not say which upstream it replaces; write --input UPSTREAM=URI "
         "(its upstreams: tokenizer, pack)"),
        ("signals", ["mixture=/m"], "signals: --input mixture=/m: signals has no upstream 'mixture'; "
                                    "its upstreams: dedup, quality_train"),
        ("signals", ["dedup=/a", "dedup=/b"], "signals: --input dedup=... given twice"),
        ("mixture", ["/a", "/b"], "mixture: one --input for its one upstream (signals), got 2"),
        ("dedup", ["/raw/docs.jsonl", "ingest=/i"], "dedup: --input /raw/docs.jsonl (input files) and --input "
                                                    "ingest=... (an upstream artifact) both replace the upstream"),
    ],
)
def test_ambiguous_or_unknown_inputs_fail_naming_the_upstreams(small_config, stage, values, message):
    with pytest.raises(XgenError) as error:
        resolve(small_config(), stage, values)
    assert str(error.value).startswith(message)


def test_stages_with_input_files_take_them_bare_or_their_upstream_by_name(small_config, tmp_path):
    cfg = small_config()
    raw = artifact(tmp_path, "raw")
    files = resolve(cfg, "dedup", [raw, raw + "/part-0.parquet"])
    assert files.external_inputs == [raw, raw + "/part-0.parquet"] and files.inputs == {}
    ingested = artifact(tmp_path, "my-ingest")
    upstream = resolve(cfg, "dedup", [f"ingest={ingested}"])
    assert upstream.inputs == {"ingest": ingested} and upstream.external_inputs == []


def test_the_command_line_error_is_one_line():
    result = subprocess.run([XGEN, "train", "pretrain", "--input", "/data/pack"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: pretrain: --input /data/pack does not say which upstream it replaces; write --input UPSTREAM=URI "
        "(its upstreams: tokenizer, pack)"
    ]

"""quality_train: fastText classifiers trained from ingested documents and reference inputs, models brought as
they are, and the config check that every classifier has positives."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from xgen_core.config import QualityTrainConfig, load_config
from xgen_core.errors import ConfigError, XgenError

MATH = "theorem proof integral equation lemma derivative matrix vector".split()
WEB = "click subscribe cookie deal cart login banner sale".split()


def words(vocab: list[str], i: int, n: int = 30) -> str:
    return " ".join(vocab[(i * 7 + j * 3) % len(vocab)] if j % 3 else "the" for j in range(n))


@pytest.mark.parametrize("profile", ["xgen-small-4b", "xgen-small-9b"])
def test_paper_profiles_name_a_reference_source_for_every_classifier(profile):
    cfg = load_config(profile).quality_train
    assert all(cfg.reference_inputs.get(c.name) for c in cfg.classifiers)


def test_a_paper_profile_without_reference_inputs_fails_at_load_naming_classifier_and_key():
    with pytest.raises(ConfigError, match=r"classifier 'prose_ref' has no positive documents: set "
                                          r"quality_train\.reference_inputs\.prose_ref"):  # fmt: skip
        load_config("xgen-small-4b", ["quality_train.reference_inputs={}"])


def test_reference_inputs_must_name_a_classifier():
    with pytest.raises(ConfigError, match=r"reference_inputs.*names no classifier: \['prose'\]"):
        load_config("tiny", ["quality_train.reference_inputs={prose: [/data/wiki]}"])


def test_classifier_names_are_unique():
    entry = "{name: twice, kind: quality, positive_sources: [math], negative_sources: []}"
    with pytest.raises(ConfigError, match="classifier names must be unique"):
        load_config("tiny", [f"quality_train.classifiers=[{entry}, {entry}]"])


def test_a_provided_model_trains_on_nothing():
    entry = "{name: dclm, kind: quality, positive_sources: [math], negative_sources: [], model: /m/dclm.bin}"
    with pytest.raises(ConfigError, match="uses the model '/m/dclm.bin' as it is"):
        load_config("tiny", [f"quality_train.classifiers=[{entry}]"])


@pytest.fixture
def wet_only_dedup(tmp_path) -> str:
    """A dedup output whose every document came from WET (source `wet`), as on the paper profiles."""
    folder = tmp_path / "dedup" / "data"
    folder.mkdir(parents=True)
    texts = [words(WEB, i) for i in range(40)]
    table = pa.table({"id": [f"w{i}" for i in range(40)], "text": texts, "source": ["wet"] * 40,
                      "cluster_id": [f"w{i}" for i in range(40)], "cluster_rank": [1] * 40})
    pq.write_table(table, folder / "part-0.parquet")
    return str(tmp_path / "dedup")


def quality_section(classifiers: list[str], references: dict | None = None) -> QualityTrainConfig:
    """The tiny profile's quality_train section with other classifiers, checked as a section on its own (the whole
    config would also ask the mixture's signals to name these classifiers)."""
    tree = load_config("tiny", ["quality_train.fasttext.bucket=4096", "quality_train.fasttext.dim=8"]).quality_train
    return QualityTrainConfig.model_validate({
        **tree.model_dump(), "classifiers": [yaml.safe_load(entry) for entry in classifiers],
        "reference_inputs": references or {},
    })  # fmt: skip


def reference_config(references: list[str]) -> QualityTrainConfig:
    entry = "{name: math_ref, kind: quality, positive_sources: [], negative_sources: [wet]}"
    return quality_section([entry], {"math_ref": references})


@pytest.mark.spark
def test_a_classifier_learns_its_positives_from_reference_inputs(spark, tmp_path, wet_only_dedup):
    import fasttext

    from xgen_core.data.quality_train import model_refs, run_quality_train

    reference = tmp_path / "reference" / "math.jsonl"
    reference.parent.mkdir()
    lines = [json.dumps({"text": words(MATH, i), "source": "arxiv"}) for i in range(40)]
    reference.write_text("\n".join(lines + ["{not json", json.dumps({"text": "  "})]) + "\n")
    out = tmp_path / "quality_train"
    result = run_quality_train(spark, wet_only_dedup, str(out), reference_config([str(reference.parent)]))
    metrics = result["metrics"]["math_ref"]
    assert metrics["trained"] and metrics["n_train_positive"] == 32 and metrics["n_train_negative"] == 32
    assert metrics["precision"] >= 0.9 and metrics["recall"] >= 0.9, metrics
    assert metrics["reference_left_out_bad_json"] == 1 and metrics["reference_left_out_empty_text"] == 1
    model = fasttext.load_model(str(out / "models" / "math_ref.bin"))
    assert "__label__positive" in model.labels
    [ref] = model_refs(str(out))
    assert ref.uri == f"{out}/models/math_ref.bin" and len(ref.sha256) == 64


@pytest.mark.spark
def test_without_positives_the_stage_names_the_key_to_set(spark, tmp_path, wet_only_dedup):
    from xgen_core.data.quality_train import run_quality_train

    entry = "{name: prose_ref, kind: quality, positive_sources: [prose], negative_sources: [wet]}"
    cfg = quality_section([entry])
    with pytest.raises(XgenError, match=r"no positive training documents .* set quality_train\.reference_inputs\.prose_ref"):
        run_quality_train(spark, wet_only_dedup, str(tmp_path / "out"), cfg)


@pytest.mark.spark
def test_a_provided_fasttext_model_is_used_as_it_is(spark, tmp_path, wet_only_dedup):
    from xgen_core.data import textclf
    from xgen_core.data.quality_train import model_refs, run_quality_train

    settings = load_config("tiny").quality_train.fasttext.model_copy(update={"bucket": 4096, "dim": 8})
    brought = textclf.train([words(MATH, i) for i in range(30)], [words(WEB, i) for i in range(30)], settings,
                            "__label__hq", seed=1)  # fmt: skip
    path = tmp_path / "brought" / "hq.bin"
    sha256 = textclf.save(brought, str(path))
    entry = f"{{name: hq, kind: quality, positive_sources: [], negative_sources: [], model: {path}, positive_label: __label__hq}}"
    cfg = quality_section([entry])
    out = tmp_path / "out"
    result = run_quality_train(spark, wet_only_dedup, str(out), cfg)
    assert result["metrics"]["hq"] == {"kind": "quality", "trained": False, "model": str(path)}
    assert not (out / "models").exists()
    [ref] = model_refs(str(out))
    assert (ref.uri, ref.sha256, ref.positive_label) == (str(path), sha256, "__label__hq")
    assert textclf.scores(textclf.load(ref), [words(MATH, 3)], "__label__hq")[0] > 0.5

    wrong = entry.replace("__label__hq", "__label__good")
    cfg = quality_section([wrong])
    with pytest.raises(XgenError, match="has no label '__label__good'"):
        run_quality_train(spark, wet_only_dedup, str(tmp_path / "out2"), cfg)


@pytest.mark.spark
def test_one_document_per_cluster_trains_so_variants_never_straddle_the_held_out_split(spark, tmp_path):
    from xgen_core.data.quality_train import run_quality_train

    folder = tmp_path / "dedup" / "data"
    folder.mkdir(parents=True)
    rows = [{"id": f"w{c}-{v}", "text": words(WEB, c) + f" variant {v}", "source": "wet", "cluster_id": f"w{c}",
             "cluster_rank": v + 1, "kept": True} for c in range(20) for v in range(3)]  # fmt: skip
    pq.write_table(pa.Table.from_pylist(rows), folder / "part-0.parquet")
    reference = tmp_path / "reference" / "math.jsonl"
    reference.parent.mkdir()
    reference.write_text("\n".join(json.dumps({"text": words(MATH, i)}) for i in range(20)) + "\n")
    result = run_quality_train(spark, str(tmp_path / "dedup"), str(tmp_path / "out"), reference_config([str(reference)]))
    metrics = result["metrics"]["math_ref"]
    assert metrics["n_train_negative"] == 16  # 20 clusters, one document each, 4 held out (not 60 variants)

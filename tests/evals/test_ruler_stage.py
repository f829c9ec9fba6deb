"""`xgen eval ruler` end to end on a tiny random model: results.jsonl, table, heatmap, predictions, skips."""

import json

from xgen_core.cli import main
from xgen_core.evals import ruler
from xgen_core.evals.results import read_results
from xgen_core.evals.ruler_tasks import TASKS


def test_ruler_command_writes_results_table_heatmap_and_is_idempotent(tmp_path, model_artifact, capsys):
    model_uri, _ = model_artifact
    out = tmp_path / "ruler-out"
    argv = ["eval", "ruler", "--model", model_uri, "--lengths", "256,512", "--samples", "2", "--out", str(out),
            "--root", str(tmp_path / "artifacts"), "ruler.max_new_tokens=8"]
    main(argv)
    assert capsys.readouterr().out.strip().endswith(f"ruler: built {out}")
    rows = read_results(str(out))
    assert {r["length"] for r in rows} == {256}  # the tiny preset reads 256 tokens: 512 is beyond it
    assert all(r["eval"] == "ruler" and r["model"] == "pretrain-abc" and r["n"] == 2 and 0 <= r["score"] <= 100
               for r in rows)
    skipped = [json.loads(line) for line in (out / "skipped.jsonl").read_text().splitlines()]
    assert {(s["task"], s["length"]) for s in skipped} | {(r["task"], r["length"]) for r in rows} == {
        (task, length) for task in TASKS for length in (256, 512)}
    assert all("beyond the model's 256-token context" == s["reason"] for s in skipped if s["length"] == 512)
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 2 * len(rows)
    assert all(p["tokens"] <= p["length"] and p["references"] for p in predictions)
    assert (out / "ruler_heatmap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["skipped_cells"] == len(skipped) and manifest["external_inputs"] == [model_uri]
    assert manifest["metrics"]["checkpoint_steps"] == {"pretrain-abc": 3}
    section = ruler.report_section(manifest, str(out), str(tmp_path))
    assert "| task | pretrain-abc @ 256 | n |" in section and "ruler_heatmap.png" in section
    main(argv)  # the same model, lengths and samples: the finished artifact is reused, not rewritten
    assert capsys.readouterr().out.strip().endswith(f"ruler: reused {out}")


def test_batches_never_mix_token_budgets_and_keep_the_batch_size():
    """A prompt sized to fill the context with its own budget (vt: 30) must not decode to another's (niah: 128)."""
    from xgen_core.evals.models import TextModel

    ids = [[1] * n for n in (10, 200, 30, 220, 50, 60, 5)]
    budgets = [128, 30, 128, 30, 128, 128, 30]
    batches = TextModel(trained=None, batch_size=2)._batches(ids, budgets)
    assert sorted(i for batch in batches for i in batch) == list(range(len(ids)))
    for batch in batches:
        assert len(batch) <= 2 and len({budgets[i] for i in batch}) == 1
    assert batches[0] == [3, 1]  # the 30-token budget rows, longest prompt first


def test_haystack_documents_are_the_held_out_side_of_the_models_corpus(model_artifact, tmp_path):
    from tests.evals.eval_fixtures import HELDOUT_FRACTION, corpus_documents
    from xgen_core.evals.models import training_documents
    from xgen_core.tokens.corpus import is_heldout_cluster

    model_uri, _ = model_artifact
    held_out = [doc for i, doc in enumerate(corpus_documents()) if is_heldout_cluster(f"c{i}", HELDOUT_FRACTION)]
    assert training_documents(model_uri, limit=1000) == held_out
    assert training_documents(model_uri, limit=2) == held_out[:2]
    given = tmp_path / "docs.jsonl"
    given.write_text('{"text": "First given document."}\n{"text": "Second one."}\n')
    assert training_documents(model_uri, 10, str(given)) == ["First given document.", "Second one."]

import numpy as np

from xgen_core.tokens.packing import inputs_and_targets, pack_documents, write_shards
from xgen_core.tokens.loader import PackedRows

BOS, EOS, PAD = 1, 2, 0


def documents():
    rng = np.random.default_rng(0)
    return [list(rng.integers(10, 100, n)) for n in (5, 17, 3, 40, 9)]


def test_rows_keep_every_token_in_order_with_segments_and_positions():
    rows = list(pack_documents(documents(), seq_len=15, bos_id=BOS, eos_id=EOS, pad_id=PAD))
    assert all(len(r["tokens"]) == 16 for r in rows)
    stream = np.concatenate([r["tokens"][r["segment_ids"] > 0] for r in rows])
    expected = np.concatenate([[BOS, *d, EOS] for d in documents()])
    np.testing.assert_array_equal(stream, expected)
    for row in rows:
        for segment in set(row["segment_ids"].tolist()) - {0}:
            in_segment = row["segment_ids"] == segment
            np.testing.assert_array_equal(row["positions"][in_segment], np.arange(in_segment.sum()))
    last = rows[-1]
    assert (last["tokens"][last["segment_ids"] == 0] == PAD).all()
    assert rows[0]["segment_ids"].tolist() == [1] * 7 + [2] * 9  # doc 2 is split across rows 0 and 1
    assert rows[1]["segment_ids"][0] == 1 and rows[1]["positions"][0] == 0


def test_targets_never_cross_a_document_boundary():
    row = next(pack_documents([[10, 11], [12, 13, 14]], seq_len=9, bos_id=BOS, eos_id=EOS, pad_id=PAD))
    batch = inputs_and_targets(row)
    # tokens: BOS 10 11 EOS BOS 12 13 14 EOS PAD
    assert batch["weights"].tolist() == [1, 1, 1, 0, 1, 1, 1, 1, 0]
    assert batch["targets"][batch["weights"] > 0].tolist() == [10, 11, EOS, 12, 13, 14, EOS]


def test_shards_read_back_as_rows(tmp_path):
    rows = list(pack_documents(documents(), seq_len=15, bos_id=BOS, eos_id=EOS, pad_id=PAD))
    counts = write_shards(iter(rows), tmp_path, rows_per_shard=2)
    assert counts["rows"] == len(rows) and counts["shards"] == -(-len(rows) // 2)
    assert counts["tokens"] == sum(len(d) + 2 for d in documents())
    source = PackedRows(tmp_path)
    assert len(source) == len(rows)
    for i, row in enumerate(rows):
        for field in row:
            np.testing.assert_array_equal(source[i][field], row[field])

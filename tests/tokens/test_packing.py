import numpy as np

from xgen_core.tokens.loader import PackedRows, ShardSet
from xgen_core.tokens.packing import inputs_and_targets, pack_documents, row_fields, write_shards

BOS, EOS, PAD = 1, 2, 0


def documents():
    rng = np.random.default_rng(0)
    return [list(rng.integers(10, 100, n)) for n in (5, 17, 3, 40, 9)]


def packed_rows(seq_len=15):
    return [row_fields(row, BOS, PAD) for row in pack_documents(documents(), seq_len, BOS, EOS, PAD)]


def test_rows_keep_every_token_in_order_with_segments_and_positions():
    rows = packed_rows()
    assert all(len(r["tokens"]) == 16 for r in rows)
    stream = np.concatenate([r["tokens"][r["segment_ids"] > 0] for r in rows])
    expected = np.concatenate([[BOS, *d, EOS] for d in documents()])
    np.testing.assert_array_equal(stream, expected)
    for row in rows:
        for segment in set(row["segment_ids"].tolist()) - {0}:
            in_segment = row["segment_ids"] == segment
            np.testing.assert_array_equal(row["positions"][in_segment], np.arange(in_segment.sum()))
    last = rows[-1]
    assert (last["tokens"][last["segment_ids"] == 0] == PAD).all() and (last["segment_ids"] == 0).any()
    assert rows[0]["segment_ids"].tolist() == [1] * 7 + [2] * 9  # doc 2 is split across rows 0 and 1
    assert rows[1]["segment_ids"][0] == 1 and rows[1]["positions"][0] == 0
    assert rows[1]["positions"][:10].tolist() == list(range(10))  # the rest of doc 2 (19 tokens, 9 in row 0)
    assert rows[1]["segment_ids"][10] == 2 and rows[1]["positions"][10] == 0  # doc 3 starts at its BOS


def test_whole_documents_start_a_new_row_instead_of_being_split():
    docs = [[10] * 5, [11] * 6, [12] * 3, [13] * 20, [14] * 2]  # with BOS / EOS: 7, 8, 5, 22, 4 tokens; rows of 16
    rows = [row_fields(r, BOS, PAD) for r in pack_documents(docs, 15, BOS, EOS, PAD, whole_documents=True)]
    stream = np.concatenate([r["tokens"][r["segment_ids"] > 0] for r in rows])
    np.testing.assert_array_equal(stream, np.concatenate([[BOS, *d, EOS] for d in docs]))
    assert rows[0]["segment_ids"].tolist() == [1] * 7 + [2] * 8 + [0]  # doc 3 (5 tokens) does not fit in 1: padding
    assert rows[1]["tokens"][0] == BOS and rows[1]["segment_ids"].tolist() == [1] * 5 + [2] * 11  # doc 4 is longer
    assert rows[2]["segment_ids"].tolist() == [1] * 11 + [2] * 4 + [0]  # than a row: split as before; doc 5 fits
    split = [row_fields(r, BOS, PAD) for r in pack_documents(docs, 15, BOS, EOS, PAD)]
    assert split[0]["segment_ids"].tolist() == [1] * 7 + [2] * 8 + [3]  # by default doc 3 is split over rows 0, 1
    batch = inputs_and_targets(rows[0])
    assert batch["weights"][-1] == 0 and batch["weights"][:-1].sum() == 6 + 7  # no target across the padding


def test_targets_never_cross_a_document_boundary():
    row = row_fields(next(pack_documents([[10, 11], [12, 13, 14]], 9, BOS, EOS, PAD)), BOS, PAD)
    batch = inputs_and_targets(row)
    # tokens: BOS 10 11 EOS BOS 12 13 14 EOS PAD
    assert batch["weights"].tolist() == [1, 1, 1, 0, 1, 1, 1, 1, 0]
    assert batch["targets"][batch["weights"] > 0].tolist() == [10, 11, EOS, 12, 13, 14, EOS]


def test_shards_hold_four_byte_tokens_only_and_read_back_as_rows(tmp_path):
    token_rows = list(pack_documents(documents(), 15, BOS, EOS, PAD))
    counts = write_shards(iter(token_rows), str(tmp_path), rows_per_shard=2, pad_id=PAD)
    assert counts["rows"] == len(token_rows) and counts["shards"] == -(-len(token_rows) // 2)
    assert counts["tokens"] == sum(len(d) + 2 for d in documents())
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"tokens-{i:05d}.npy" for i in range(counts["shards"])]
    stored = np.load(tmp_path / "tokens-00000.npy")
    assert stored.dtype == np.uint32 and stored.nbytes == 2 * 16 * 4
    source = PackedRows(ShardSet(str(tmp_path), tuple(counts["shard_rows"]), BOS, PAD))
    assert len(source) == len(token_rows)
    expected = packed_rows()
    got = source.fields([source[i] for i in range(len(source))])
    for field in ("tokens", "segment_ids", "positions"):
        np.testing.assert_array_equal(got[field], np.stack([r[field] for r in expected]))


def test_special_token_text_inside_a_document_never_becomes_a_boundary(tmp_path):
    from xgen_core.tokens.shards import pack_stage
    from xgen_core.tokens.tokenizer import tokenizer_config, train_tokenizer

    texts = [f"line {i} of plain text" for i in range(50)]
    tokenizer = train_tokenizer(texts, vocab_size=300, min_frequency=2)
    config = tokenizer_config(tokenizer, 300)
    tricky = "a document quoting <|bos|> and <|pad|> and <|eos|> as text"
    unigram = np.zeros(config["vocab_size"], np.int64)
    counts = pack_stage(tokenizer, config, [(tricky, "c1")], str(tmp_path), seq_len=255, heldout_fraction=0.0,
                        rows_per_shard=4, unigram_counts=unigram)
    rows = np.load(tmp_path / "train" / "tokens-00000.npy")
    fields = row_fields(rows, config["bos_id"], config["pad_id"])
    assert counts["train"]["rows"] == 1 and set(fields["segment_ids"][0].tolist()) == {0, 1}
    real = fields["tokens"][0][fields["segment_ids"][0] > 0]
    assert tokenizer.decode(real[1:-1].tolist()) == tricky

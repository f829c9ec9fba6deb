"""Hosts read their own shards straight from the store (the GCS emulator here), row by row, no local copy."""

import io
import uuid
from collections import Counter

import numpy as np
import pytest

from xgen_core.storage import GCSStore, LocalStore, store_for
from xgen_core.tokens.loader import NPY_HEADER_BYTES, PackedRows, ShardSet, batched_rows
from xgen_core.tokens.packing import pack_documents, shard_name, write_shards

ROW_LEN = 8


def write_gcs_stage(base: str) -> tuple[ShardSet, dict]:
    documents = [[100 + i] * (3 + i % 5) for i in range(60)]
    uri = f"{base}/{uuid.uuid4().hex}/stage1/train"
    counts = write_shards(pack_documents(documents, ROW_LEN - 1, bos_id=1, eos_id=2, pad_id=0), uri,
                          rows_per_shard=6, pad_id=0)
    return ShardSet(uri, tuple(counts["shard_rows"]), bos_id=1, pad_id=0), counts


def every_stored_row(shards: ShardSet) -> Counter:
    store = store_for(shards.uri)
    rows = Counter()
    for index in range(len(shards.shard_rows)):
        array = np.load(io.BytesIO(store.read_bytes(f"{shards.uri}/{shard_name(index)}")))
        rows.update(tuple(row) for row in array)
    return rows


def test_two_hosts_read_only_their_own_shards_and_together_every_row_once(gcs_emulator, monkeypatch):
    shards, counts = write_gcs_stage(gcs_emulator)
    assert counts["shards"] >= 4
    reads: list[tuple[str, int, int]] = []
    real_read_range = GCSStore.read_range

    def recorded(self, uri, start, length):
        reads.append((uri, start, length))
        return real_read_range(self, uri, start, length)

    monkeypatch.setattr(GCSStore, "read_range", recorded)
    monkeypatch.setattr(GCSStore, "read_bytes", lambda *a: pytest.fail("a whole-object download"))
    monkeypatch.setattr(LocalStore, "write_bytes", lambda *a: pytest.fail("a local copy"))
    seen = Counter()
    for host in range(2):
        reads.clear()
        source = PackedRows(shards, process_index=host, process_count=2)
        seen.update(tuple(source[i]) for i in range(len(source)))
        touched = {uri.rsplit("/", 1)[1] for uri, _, _ in reads}
        assert touched == {shard_name(i) for i in range(host, counts["shards"], 2)}
        assert {length for _, _, length in reads} == {NPY_HEADER_BYTES, ROW_LEN * 4}  # one header, then rows
    monkeypatch.undo()
    assert seen == every_stored_row(shards)  # every row, each exactly as often as it is stored
    assert sum(seen.values()) == counts["rows"]


def test_a_host_batches_rows_of_its_own_shards_with_derived_segments(gcs_emulator):
    shards, counts = write_gcs_stage(gcs_emulator)
    host_rows = PackedRows(shards, process_index=1, process_count=2)
    own = {tuple(host_rows[i]) for i in range(len(host_rows))}
    batch = next(iter(batched_rows(shards, batch_rows=4, seed=0, process_index=1, process_count=2)))
    assert {tuple(row) for row in batch["tokens"].astype(np.uint32)} <= own
    assert batch["segment_ids"].shape == batch["positions"].shape == (4, ROW_LEN)
    assert (batch["segment_ids"][:, 0] == 1).all() and (batch["positions"][:, 0] == 0).all()


def test_fewer_shards_than_hosts_is_a_clear_error(tmp_path):
    from xgen_core.errors import XgenError

    counts = write_shards(pack_documents([[5, 6, 7]], 7, 1, 2, 0), str(tmp_path), rows_per_shard=4, pad_id=0)
    with pytest.raises(XgenError, match="fewer than the 2 hosts"):
        PackedRows(ShardSet(str(tmp_path), tuple(counts["shard_rows"]), 1, 0), process_index=0, process_count=2)

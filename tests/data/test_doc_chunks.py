import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from xgen_core.data.doc_chunks import conform, data_files, input_format, plan_chunks, read_chunk, write_parquet
from xgen_core.errors import XgenError
from xgen_core.storage import join


def numbered(start: int, n: int) -> pa.Table:
    return pa.table({"id": [f"d{i}" for i in range(start, start + n)], "n": list(range(start, start + n))})


def test_chunks_cover_every_row_once_in_order_on_every_backend(root):
    for index, (start, n) in enumerate([(0, 1000), (1000, 10)]):
        write_parquet(numbered(start, n), join(root, "in", f"f{index}.parquet"))
    files = data_files([join(root, "in")])
    assert input_format(files, "in") == "parquet"
    chunks, schema = plan_chunks(files, rows_per_chunk=300)
    assert [c.row_count for c in chunks] == [250, 250, 250, 250, 10]
    assert schema.names == ["id", "n"]
    rows = [value for chunk in chunks for value in read_chunk(chunk).column("n").to_pylist()]
    assert rows == list(range(1010))


def test_a_chunk_reads_only_its_rows_across_row_group_boundaries(tmp_path):
    path = tmp_path / "f.parquet"
    pq.write_table(numbered(0, 100), path, row_group_size=7)
    chunks, _ = plan_chunks([str(path)], rows_per_chunk=30)
    assert [read_chunk(c).column("n").to_pylist() for c in chunks] == [
        list(range(0, 25)), list(range(25, 50)), list(range(50, 75)), list(range(75, 100)),
    ]  # fmt: skip


def test_conform_adds_missing_columns_and_casts():
    table = pa.table({"n": pa.array([1, 2], pa.int32())})
    schema = pa.schema([("id", pa.string()), ("n", pa.int64())])
    assert conform(table, schema).to_pylist() == [{"id": None, "n": 1}, {"id": None, "n": 2}]


def test_inputs_that_mix_or_lack_formats_are_refused(tmp_path):
    with pytest.raises(XgenError, match="mixes or lacks"):
        input_format([str(tmp_path / "a.parquet"), str(tmp_path / "b.jsonl")], "in")
    with pytest.raises(XgenError, match="does not exist"):
        data_files([str(tmp_path / "missing")])

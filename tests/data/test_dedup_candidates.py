"""The hand-made sorted join of verified_edges: signatures carried across batches, repeated rows, missing ones."""

import numpy as np
import pyarrow as pa

from tests.data.test_dedup import PARAMS
from xgen_core.data.dedup.candidates import KEYED_SCHEMA, NO_NODE, attach_key_signature, check_edges

CHECK = PARAMS.model_copy(update={"num_perm": 8, "threshold": 0.5})


def signatures() -> dict[int, np.ndarray]:
    rng = np.random.default_rng(0)
    sig = {node: rng.integers(0, 2**32, 8, dtype=np.uint32) for node in range(1, 4)}
    sig[2] = sig[1].copy()
    sig[2][:3] = 7  # 5 of 8 values shared with node 1
    sig[3] = sig[1].copy()
    sig[3][:5] = 9  # 3 of 8 shared with node 1, 3 with node 2
    return sig


def keyed(rows: list[tuple]) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays(
        [
            pa.array([row[0] for row in rows], pa.int64()),
            pa.array([row[1] for row in rows], pa.int8()),
            pa.array([row[2] for row in rows], pa.int64()),
            pa.array([None if row[3] is None else row[3].tobytes() for row in rows], pa.binary()),
        ],
        names=KEYED_SCHEMA.names,
    )


def test_edges_meet_both_signatures_once_and_only_similar_pairs_pass():
    sig = signatures()
    # One partition sorted by (key, kind, other), cut into batches: node 2's signature twice, edge 2->1 twice (two
    # bands), a key's signature in the batch before its edges, and an edge from node 5, which has no signature.
    by_src = [
        keyed([(1, 0, NO_NODE, sig[1])]),
        keyed([(2, 0, NO_NODE, sig[2]), (2, 0, NO_NODE, sig[2]), (2, 1, 1, None)]),
        keyed([(2, 1, 1, None), (3, 0, NO_NODE, sig[3]), (3, 1, 1, None)]),
        keyed([(3, 1, 2, None), (5, 1, 4, None)]),
    ]
    attached = pa.Table.from_batches(list(attach_key_signature(CHECK)(iter(by_src)))).to_pylist()
    assert [(row["key"], row["other"]) for row in attached] == [(1, 2), (1, 3), (2, 3)]
    assert all(np.array_equal(np.frombuffer(row["signature"], np.uint32), sig[row["other"]]) for row in attached)

    by_dst = sorted((row["key"], 1, row["other"], np.frombuffer(row["signature"], np.uint32)) for row in attached)
    partition = [keyed([(1, 0, NO_NODE, sig[1]), by_dst[0]]), keyed([by_dst[1], (2, 0, NO_NODE, sig[2]), by_dst[2]])]
    checked = pa.Table.from_batches(list(check_edges(CHECK)(iter(partition)))).to_pylist()
    assert [(row["src"], row["dst"]) for row in checked] == [(2, 1)]

"""connected_components against a plain union-find, on the graphs LSH buckets give and on arbitrary ones."""

import random

import pytest

from xgen_core.data.dedup.components import connected_components

pytestmark = pytest.mark.spark

# Bucket stars {3,4,5}, {1,4}, {2,5}: after one large-star + small-star round node 3 points at both 1 and 2.
COUNTEREXAMPLE = [(4, 3), (5, 3), (4, 1), (5, 2)]
# Random bucket graphs that end the same way after one round (found by running the star rules on 3,000 of them).
TWO_ROOTS_AFTER_ONE_ROUND = [
    [(4, 2), (5, 2), (5, 3), (6, 3), (6, 4), (7, 1), (7, 3)],
    [(4, 1), (7, 3), (8, 3), (8, 6), (9, 1), (9, 6), (10, 4)],
    [(4, 2), (4, 3), (5, 2), (5, 3), (7, 1), (7, 3)],
]


def union_find_roots(edges: list[tuple[int, int]]) -> dict[int, int]:
    """node -> smallest node of its component, for every node on an edge."""
    parent: dict[int, int] = {}

    def find(x: int) -> int:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in edges:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return {node: find(node) for node in list(parent)}


# Star rounds alone; after contracting each of 3 partitions (edges dealt round-robin, so components span them), then
# rounds (as above ONE_TASK_MAX_EDGES) or one task over all the stars.
CONTRACTIONS = [
    pytest.param((False, 0), id="star-rounds"),
    pytest.param((True, 0), id="partitions-contracted-then-rounds"),
    pytest.param((True, 10**9), id="partitions-contracted-then-one-task"),
]


def spark_roots(spark, edges: list[tuple[int, int]], contract: tuple[bool, int] = (False, 0)) -> dict[int, int]:
    """node -> root from connected_components; fails if a node comes back with two roots."""
    frame = spark.createDataFrame(edges, "src long, dst long").repartition(3)
    contract_partitions, one_task_max_edges = contract
    messages: list[str] = []
    found = connected_components(frame, messages.append, contract_partitions=contract_partitions, one_task_max_edges=one_task_max_edges)
    rows = found.collect()
    assert any("in one task" in message for message in messages) == (contract_partitions and one_task_max_edges > 0)
    roots = {row.node: row.root for row in rows}
    assert len(roots) == len(rows), "a node has more than one root"
    # Roots are not listed as nodes of their own: they point nowhere.
    return {**{root: root for root in roots.values()}, **roots}


def disjoint_union(graphs: list[list[tuple[int, int]]], stride: int = 1000) -> list[tuple[int, int]]:
    return [(a + stride * k, b + stride * k) for k, graph in enumerate(graphs) for a, b in graph]


def bucket_graph(rng: random.Random) -> list[tuple[int, int]]:
    """Edges from each member of a few random buckets to the bucket's smallest node (a star per bucket)."""
    n = rng.randint(4, 12)
    edges = set()
    for _ in range(rng.randint(1, 6)):
        bucket = rng.sample(range(1, n + 1), rng.randint(2, min(4, n)))
        edges |= {(node, min(bucket)) for node in bucket if node != min(bucket)}
    return sorted(edges)


def arbitrary_graph(rng: random.Random) -> list[tuple[int, int]]:
    """Random edges in both orientations, including long paths (components of large diameter)."""
    n = rng.randint(2, 40)
    if rng.random() < 0.3:
        order = rng.sample(range(1, n + 1), n)
        return list(zip(order, order[1:]))
    return [tuple(rng.sample(range(1, n + 1), 2)) for _ in range(rng.randint(1, 2 * n))]


@pytest.mark.parametrize("contract", CONTRACTIONS)
def test_bucket_stars_that_leave_a_node_between_two_roots_converge(spark, contract):
    assert spark_roots(spark, COUNTEREXAMPLE, contract) == {1: 1, 2: 1, 3: 1, 4: 1, 5: 1}


@pytest.mark.parametrize("contract", CONTRACTIONS)
def test_random_bucket_graphs_that_stop_early_under_the_old_rule_match_union_find(spark, contract):
    edges = disjoint_union([COUNTEREXAMPLE, *TWO_ROOTS_AFTER_ONE_ROUND])
    assert spark_roots(spark, edges, contract) == union_find_roots(edges)


@pytest.mark.parametrize("contract", CONTRACTIONS)
def test_hundreds_of_random_graphs_match_union_find(spark, contract):
    rng = random.Random(18)
    graphs = [bucket_graph(rng) for _ in range(300)] + [arbitrary_graph(rng) for _ in range(200)]
    edges = disjoint_union(graphs)
    assert spark_roots(spark, edges, contract) == union_find_roots(edges)


@pytest.mark.parametrize("contract", CONTRACTIONS)
@pytest.mark.parametrize("seed", range(3))
def test_single_random_graphs_match_union_find(spark, seed, contract):
    rng = random.Random(seed)
    edges = bucket_graph(rng) + arbitrary_graph(rng)
    assert spark_roots(spark, edges, contract) == union_find_roots(edges)


def test_contracting_a_partition_links_each_component_to_its_smallest_node():
    import pyarrow as pa

    from xgen_core.data.dedup.components import local_stars

    batches = [pa.RecordBatch.from_pydict({"src": [9, 4, 7], "dst": [4, 2, 8]}), pa.RecordBatch.from_pydict({"src": [5], "dst": [5]})]
    stars = pa.Table.from_batches(list(local_stars(iter(batches)))).to_pydict()
    assert sorted(zip(stars["src"], stars["dst"])) == [(4, 2), (8, 7), (9, 2)]

"""The Store contract on local disk, on the GCS emulator, and on a generation-enforcing GCS double."""

from __future__ import annotations

import threading


from tests.fake_gcs import FakeClient
from xgen_core.storage import GCSStore, LocalStore, join, store_for, use_gcs_client


def test_store_for_picks_backend_by_scheme(tmp_path):
    assert isinstance(store_for(str(tmp_path)), LocalStore)
    assert isinstance(store_for(f"file://{tmp_path}"), LocalStore)
    use_gcs_client(FakeClient())
    try:
        assert isinstance(store_for("gs://b/x"), GCSStore)
    finally:
        use_gcs_client(None)


def test_write_read_list_delete(root):
    store = store_for(root)
    store.write_text(join(root, "a", "one.txt"), "1")
    store.write_bytes(join(root, "a", "b", "two.bin"), b"\x00\x01")
    assert store.read_text(join(root, "a", "one.txt")) == "1"
    with store.open_read(join(root, "a", "b", "two.bin")) as handle:
        assert handle.read() == b"\x00\x01"
    listed = [f.uri.rsplit("/a/", 1)[-1] for f in store.list_files(join(root, "a"))]
    assert listed == ["b/two.bin", "one.txt"]
    assert [f.size for f in store.list_files(join(root, "a", "one.txt"))] == [1]
    store.delete_prefix(join(root, "a"))
    assert store.list_files(join(root, "a")) == []
    assert not store.exists(join(root, "a", "one.txt"))


def test_copy_gives_the_bytes_and_outlives_changes_to_the_source(root):
    store = store_for(root)
    source, target = join(root, "old", "part-00000.parquet"), join(root, "new", "s=1", "part-00000.parquet")
    store.write_bytes(source, b"signatures")
    store.write_bytes(target, b"left over from a killed attempt")
    store.copy(source, target)
    assert store.read_bytes(target) == b"signatures"
    store.write_bytes(source, b"replaced")
    assert store.read_bytes(target) == b"signatures"
    store.delete(source)
    assert store.read_bytes(target) == b"signatures"


def test_publish_moves_staging_whole_and_marker_last(root):
    store = store_for(root)
    staging, final = join(root, "x.staging-1"), join(root, "x")
    store.write_text(join(staging, "data", "part-0"), "rows")
    assert store.publish(staging, final, "_SUCCESS", b"ok")
    assert store.read_text(join(final, "data", "part-0")) == "rows"
    assert store.exists(join(final, "_SUCCESS"))
    assert store.list_files(staging) == []


def test_publish_onto_a_committed_artifact_keeps_the_first(root):
    store = store_for(root)
    final = join(root, "x")
    store.write_text(join(root, "s1", "f"), "first")
    store.write_text(join(root, "s2", "f"), "second")
    assert store.publish(join(root, "s1"), final, "_SUCCESS", b"1")
    assert not store.publish(join(root, "s2"), final, "_SUCCESS", b"2")
    assert store.read_text(join(final, "f")) == "first"
    assert store.list_files(join(root, "s2")) == []


def test_create_is_write_once(cas_root):
    store = store_for(cas_root)
    uri = join(cas_root, "marker")
    assert store.create(uri, b"first")
    assert not store.create(uri, b"second")
    assert store.read_bytes(uri) == b"first"


def test_replace_if_is_compare_and_swap(cas_root):
    store = store_for(cas_root)
    uri = join(cas_root, "lease.json")
    store.create(uri, b"v1")
    _, generation = store.read_with_generation(uri)
    new_generation = store.replace_if(uri, b"v2", generation)
    assert new_generation is not None and new_generation != generation
    assert store.replace_if(uri, b"v3", generation) is None  # stale generation loses
    assert store.read_bytes(uri) == b"v2"


def test_only_one_of_many_racing_creates_wins(cas_root):
    store = store_for(cas_root)
    uri = join(cas_root, "race")
    wins = []
    barrier = threading.Barrier(8)

    def contender(n: int) -> None:
        barrier.wait()
        if store.create(uri, str(n).encode()):
            wins.append(n)

    threads = [threading.Thread(target=contender, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(wins) == 1
    assert store.read_bytes(uri) == str(wins[0]).encode()

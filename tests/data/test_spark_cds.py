from xgen_core.data import spark_cds


def test_the_archive_flag_appears_only_when_enabled_and_built(tmp_path, monkeypatch):
    archive = tmp_path / "classes.jsa"
    monkeypatch.setattr(spark_cds, "archive_path", lambda: archive)
    assert spark_cds.java_options(True) == ""  # not built yet: the JVM starts as before
    archive.write_bytes(b"archive")
    assert spark_cds.java_options(True) == f"-XX:SharedArchiveFile={archive} -Xshare:auto"
    assert spark_cds.java_options(False) == ""


def test_build_keeps_an_existing_archive(tmp_path, monkeypatch):
    archive = tmp_path / "classes.jsa"
    archive.write_bytes(b"archive")
    monkeypatch.setattr(spark_cds, "archive_path", lambda: archive)
    assert spark_cds.build() == archive and archive.read_bytes() == b"archive"

"""The house rules of ARCHITECTURE.md, checked: import directions, one stage table, names that match."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

from xgen_core.stages import STAGES

REPO = Path(__file__).resolve().parent.parent


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_the_library_never_imports_airflow_or_the_layers_above_it():
    for path in (REPO / "xgen_core").rglob("*.py"):
        forbidden = imported_modules(path) & {"airflow", "operators", "dags", "data_jobs", "train_jobs"}
        assert not forbidden, f"{path.relative_to(REPO)} imports {forbidden}"


def test_operators_and_dags_import_no_compute_framework():
    for folder in ("operators", "dags"):
        for path in (REPO / folder).rglob("*.py"):
            heavy = imported_modules(path) & {"jax", "pyspark", "flax", "tensorflow", "torch"}
            assert not heavy, f"{path.relative_to(REPO)} imports {heavy}"


def test_every_stage_has_its_entrypoint_and_no_name_shadows_the_standard_library():
    for stage in STAGES:
        folder, module = stage.entrypoint_module.split(".")
        entrypoint = REPO / folder / f"{module}.py"
        assert entrypoint.exists(), f"missing entrypoint {entrypoint.relative_to(REPO)}"
        assert f'stage_main("{stage.name}")' in entrypoint.read_text()
        assert stage.name not in sys.stdlib_module_names
    for folder in ("data_jobs", "train_jobs"):
        for path in (REPO / folder).glob("*.py"):
            assert path.stem not in sys.stdlib_module_names, f"{path} shadows a standard-library module"


def test_the_stage_table_is_the_only_list_of_stages():
    stage_names = {s.name for s in STAGES}
    for folder in ("operators", "dags"):
        for path in (REPO / folder).rglob("*.py"):
            literals = {n.value for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Constant)}
            listed = (literals & stage_names) - {"report", "ingest", "sample_corpus"}
            assert not listed, f"{path.relative_to(REPO)} names stages {listed}; read xgen_core.stages instead"


def test_fasttext_is_the_full_build_that_can_train():
    import fasttext

    assert hasattr(fasttext, "train_supervised"), "a predict-only fasttext build shadows fasttext-numpy2-wheel"

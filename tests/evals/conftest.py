import pytest

from tests.evals.eval_fixtures import write_model_artifact


@pytest.fixture(scope="session")
def model_artifact(tmp_path_factory):
    """(pretrain artifact URI, its tokenizer): a random tiny decoder packed from a small prose corpus."""
    return write_model_artifact(tmp_path_factory.mktemp("eval_model"))

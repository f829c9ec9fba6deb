import pytest

from tests.posttrain.fixtures import make_init_artifact


@pytest.fixture(scope="session")
def init_artifact(tmp_path_factory):
    return make_init_artifact(tmp_path_factory.mktemp("posttrain_init"))

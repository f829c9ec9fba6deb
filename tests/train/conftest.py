import pytest

from tests.train.pretrain_fixtures import STAGES, synthetic_documents
from xgen_core.tokens.shards import pack_curriculum
from xgen_core.tokens.tokenizer import tokenizer_config, train_tokenizer


@pytest.fixture(scope="session")
def packed_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("packed")
    texts = synthetic_documents(600)
    tokenizer = train_tokenizer(texts, vocab_size=320, min_frequency=2)
    config = tokenizer_config(tokenizer, 320)
    stage_documents = {name: [(text, f"{name}-{j}") for j, text in enumerate(synthetic_documents(300, offset=100 * i))]
                       for i, name in enumerate(STAGES)}
    pack_curriculum(tokenizer, config, stage_documents, out, seq_len=32, heldout_fraction=0.1, rows_per_shard=64)
    return str(out)

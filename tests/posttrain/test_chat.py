"""The chat template and packing: special tokens as ids, loss on assistant tokens only, whole examples per row."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xgen_core.errors import XgenError
from xgen_core.posttrain.chat import ChatTemplate, pack_examples, sft_targets
from xgen_core.posttrain.sft import assistant_loss
from xgen_core.tokens.tokenizer import load_tokenizer

CONVERSATION = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is 2 + 3?"},
    {"role": "assistant", "content": "2 + 3 = 5. The answer is 5."},
    {"role": "user", "content": "And 4 + 4?"},
    {"role": "assistant", "content": "4 + 4 = 8. The answer is 8."},
]


@pytest.fixture(scope="module")
def template(init_artifact):
    tokenizer, config = load_tokenizer(init_artifact.replace("pretrain", "tokenizer"))
    return ChatTemplate(tokenizer, config)


def turn_spans(template, messages):
    """(role, start, end) of each message's content + closing <|im_end|> in the rendered ids."""
    ids, _ = template.render(messages)
    spans, position = [], 1
    for message in messages:
        header = len(template._header(message["role"]))
        content = len(template._text(message["content"]))
        spans.append((message["role"], position + header, position + header + content + 1))
        position += header + content + 1 + len(template.newline)
    assert position == len(ids)
    return spans


def test_render_marks_assistant_content_and_its_end_only(template):
    ids, mask = template.render(CONVERSATION)
    assert ids[0] == template.bos_id and ids.count(template.im_start) == 5 and ids.count(template.im_end) == 5
    expected = np.zeros(len(ids), int)
    for role, start, end in turn_spans(template, CONVERSATION):
        if role == "assistant":
            expected[start:end] = 1
            assert ids[end - 1] == template.im_end
    assert mask == expected.tolist()
    assert template.decode_completion(ids[turn_spans(template, CONVERSATION)[2][1]:]) == CONVERSATION[2]["content"]


def test_special_token_text_in_a_message_stays_text(template):
    ids, _ = template.render([{"role": "user", "content": "<|im_end|><|bos|>"},
                              {"role": "assistant", "content": "ok"}])
    assert ids.count(template.im_end) == 2 and ids.count(template.bos_id) == 1


def test_user_and_system_tokens_carry_zero_loss(template):
    """The gradient of the SFT loss with respect to the logits is zero at every position whose target is a
    system, user or header token (or crosses into the next packed example) and non-zero at assistant targets."""
    first = template.render(CONVERSATION)
    second = template.render(CONVERSATION[1:3])
    packed = pack_examples([first, second], seq_len=len(first[0]) + len(second[0]) + 3, pad_id=template.pad_id)
    assert packed["segment_ids"][0].max() == 2  # both examples share the row, as separate segments
    rows = {k: jnp.asarray(v) for k, v in packed.items()}
    vocab = 400
    logits = jax.random.normal(jax.random.key(0), (*packed["tokens"][:, :-1].shape, vocab))
    grad = jax.grad(lambda lg: assistant_loss(lg, rows)[0])(logits)
    touched = np.abs(np.asarray(grad)).sum(-1)[0] > 0  # per input position: does its target carry loss?

    assistant_targets = np.zeros(packed["tokens"].shape[1], bool)
    offset = 0
    for (ids, _), messages in ((first, CONVERSATION), (second, CONVERSATION[1:3])):
        for role, start, end in turn_spans(template, messages):
            if role == "assistant":
                assistant_targets[offset + start: offset + end] = True
        offset += len(ids)
    # the logits at input position p predict the token at p + 1
    assert (touched == assistant_targets[1:]).all()
    assert touched.sum() == sft_targets(packed)["weights"].sum() == np.sum(packed["loss_mask"])


def test_packing_keeps_examples_whole_with_their_own_positions(template):
    examples = [template.render(CONVERSATION[1:3]) for _ in range(5)]
    length = len(examples[0][0])
    packed = pack_examples(examples, seq_len=2 * length + 1, pad_id=template.pad_id)
    assert packed["tokens"].shape == (3, 2 * length + 2)
    assert packed["segment_ids"][0].tolist() == [1] * length + [2] * length + [0, 0]
    assert packed["positions"][0, length:2 * length].tolist() == list(range(length))
    assert (packed["tokens"][2, length:] == template.pad_id).all()
    with pytest.raises(XgenError, match="does not fit"):
        pack_examples(examples, seq_len=length - 5, pad_id=template.pad_id)

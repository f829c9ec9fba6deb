"""The chat template (ChatML with the tokenizer's own special tokens), assistant-only loss masks, and packing.

A conversation renders as

    <|bos|><|im_start|>system\n{content}<|im_end|>\n<|im_start|>user\n{content}<|im_end|>\n
    <|im_start|>assistant\n{content}<|im_end|>\n

The special tokens are inserted as ids, never parsed out of text, so a user who types "<|im_end|>" gets those
characters as plain text. The loss mask marks the tokens the model is trained to produce: an assistant turn's
content and the <|im_end|> that closes it (so it learns to stop); everything else (system and user turns, the role
headers, the newline after <|im_end|>) has mask 0.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from xgen_core.errors import XgenError

IM_START, IM_END = "<|im_start|>", "<|im_end|>"
ROLES = ("system", "user", "assistant")


class ChatTemplate:
    def __init__(self, tokenizer, tokenizer_config: dict):
        special = tokenizer_config["special_tokens"]
        missing = [token for token in (IM_START, IM_END) if special.get(token) is None]
        if missing:
            raise XgenError(f"the tokenizer has no chat tokens {missing}: retrain it (tokenizer stage code_version 2)")
        self.tokenizer = tokenizer
        tokenizer.encode_special_tokens = True  # text that spells a special token stays text, as in pretraining
        self.bos_id, self.eos_id, self.pad_id = (tokenizer_config[k] for k in ("bos_id", "eos_id", "pad_id"))
        self.im_start, self.im_end = special[IM_START], special[IM_END]
        self.newline = self._text("\n")

    def _text(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids if text else []

    def _header(self, role: str) -> list[int]:
        return [self.im_start, *self._text(f"{role}\n")]

    def render(self, messages: Sequence[dict]) -> tuple[list[int], list[int]]:
        """(token ids, loss mask) of a whole conversation, BOS first."""
        ids, mask = [self.bos_id], [0]
        for message in messages:
            header, content = self._header(message["role"]), self._text(message["content"])
            trained = 1 if message["role"] == "assistant" else 0
            ids += header + content + [self.im_end] + self.newline
            mask += [0] * len(header) + [trained] * (len(content) + 1) + [0] * len(self.newline)
        return ids, mask

    def prompt(self, messages: Sequence[dict]) -> list[int]:
        """Ids of the conversation so far plus the assistant header: what generation continues from."""
        ids, _ = self.render(messages)
        return ids + self._header("assistant")

    def completion(self, text: str) -> list[int]:
        """An assistant turn's content and its closing <|im_end|>: the tokens DPO and GRPO score."""
        return [*self._text(text), self.im_end]

    def decode_completion(self, ids: Iterable[int]) -> str:
        kept = []
        for token in ids:
            if token in (self.im_end, self.eos_id):
                break
            kept.append(token)
        return self.tokenizer.decode(kept)

    @property
    def stop_tokens(self) -> tuple[int, ...]:
        return (self.im_end, self.eos_id)


def pack_examples(examples: Iterable[tuple[list[int], list[int]]], seq_len: int, pad_id: int) -> dict[str, np.ndarray]:
    """Whole examples (ids, loss mask) packed first-fit into rows of seq_len + 1, each example its own segment.

    An example never straddles two rows (its loss needs its own prompt); the caller drops longer ones first.
    Fields: tokens, segment_ids (from 1 within a row, 0 = padding), positions (from 0 per segment), loss_mask.
    """
    row_len = seq_len + 1
    rows: list[dict[str, list[int]]] = []
    free: list[int] = []
    for ids, mask in examples:
        if len(ids) > row_len:
            raise XgenError(f"an example of {len(ids)} tokens does not fit a row of {row_len}")
        index = next((i for i, space in enumerate(free) if space >= len(ids)), None)
        if index is None:
            rows.append({"tokens": [], "segment_ids": [], "positions": [], "loss_mask": []})
            free.append(row_len)
            index = len(rows) - 1
        row = rows[index]
        segment = (row["segment_ids"][-1] if row["segment_ids"] else 0) + 1
        row["tokens"] += ids
        row["segment_ids"] += [segment] * len(ids)
        row["positions"] += list(range(len(ids)))
        row["loss_mask"] += mask
        free[index] -= len(ids)
    packed = {name: np.zeros((len(rows), row_len), np.int32) for name in ("tokens", "segment_ids", "positions",
                                                                          "loss_mask")}
    packed["tokens"][:] = pad_id
    for r, row in enumerate(rows):
        for name, values in row.items():
            packed[name][r, :len(values)] = values
    return packed


def sft_targets(rows: dict) -> dict:
    """Model inputs and next-token targets of packed rows; a target weighs 1 only where it is an assistant token
    of the same segment as its input."""
    tokens, segments, positions, loss_mask = (rows[k] for k in ("tokens", "segment_ids", "positions", "loss_mask"))
    same_segment = (segments[..., :-1] == segments[..., 1:]) & (segments[..., 1:] > 0)
    return {
        "inputs": tokens[..., :-1], "positions": positions[..., :-1], "segment_ids": segments[..., :-1],
        "targets": tokens[..., 1:], "weights": (same_segment & (loss_mask[..., 1:] > 0)).astype(np.float32),
    }

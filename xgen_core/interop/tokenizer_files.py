"""Our tokenizer as Hugging Face tokenizer files, and back.

Our code puts BOS in front of every document itself (packing, `xgen model generate`), so our tokenizer.json adds
nothing. In the exported files a post-processor adds the BOS, so that `AutoTokenizer.from_pretrained(DIR)(text)`
gives the ids the model was trained on, as Llama tokenizers do; importing removes that step again.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, processors

from xgen_core.errors import InputError
from xgen_core.tokens.tokenizer import CHAT_TOKENS

HF_TOKENIZER_FILE = "tokenizer.json"
HF_TOKENIZER_CONFIG = "tokenizer_config.json"
HF_SPECIAL_TOKENS_MAP = "special_tokens_map.json"


def write_hf_tokenizer(tokenizer: Tokenizer, special: dict, directory: Path, model_max_length: int) -> list[str]:
    """tokenizer.json (BOS added by its post-processor), tokenizer_config.json and special_tokens_map.json."""
    exported = Tokenizer.from_str(tokenizer.to_str())
    bos = special["bos_token"]
    exported.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B:1", special_tokens=[(bos, special["bos_id"])]
    )
    exported.save(str(directory / HF_TOKENIZER_FILE))
    chat_tokens = [token for token in special.get("chat_tokens", []) if exported.token_to_id(token) is not None]
    tokens = {"bos_token": bos, "eos_token": special["eos_token"], "pad_token": special["pad_token"]}
    # PreTrainedTokenizerFast: a class that transformers 4 and 5 both load from tokenizer.json alone.
    config = {"tokenizer_class": "PreTrainedTokenizerFast", **tokens, "model_max_length": model_max_length,
              "add_bos_token": True, "add_eos_token": False, "clean_up_tokenization_spaces": False,
              "additional_special_tokens": chat_tokens}
    (directory / HF_TOKENIZER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    (directory / HF_SPECIAL_TOKENS_MAP).write_text(
        json.dumps({**tokens, "additional_special_tokens": chat_tokens}, indent=2) + "\n")
    return [HF_TOKENIZER_FILE, HF_TOKENIZER_CONFIG, HF_SPECIAL_TOKENS_MAP]


def read_hf_tokenizer(hf_dir: str) -> tuple[Tokenizer, dict]:
    """A `tokenizers.Tokenizer` that adds no special tokens itself and our tokenizer config, from the tokenizer
    files of a Hugging Face checkpoint (read by transformers' AutoTokenizer, so any fast tokenizer it knows)."""
    from transformers import AutoTokenizer

    try:
        hf = AutoTokenizer.from_pretrained(hf_dir)
    except (OSError, ValueError) as exc:
        raise InputError(f"{hf_dir}: transformers cannot load its tokenizer ({exc})") from None
    backend = getattr(hf, "backend_tokenizer", None)
    if backend is None:
        raise InputError(f"{hf_dir}: the tokenizer has no fast (tokenizers) form; save it with tokenizer.json")
    for role in ("bos", "eos"):
        if getattr(hf, f"{role}_token_id") is None:
            raise InputError(f"{hf_dir}: the tokenizer has no {role.upper()} token; our training starts every "
                             "document with BOS and generation stops at EOS")
    tokenizer = _without_template_post_processor(backend)
    pad_token = hf.pad_token if hf.pad_token_id is not None else hf.eos_token  # the usual stand-in for Llama
    special_ids = {token: tokenizer.token_to_id(token) for token in hf.all_special_tokens}
    return tokenizer, {
        "type": "hugging-face-import",
        "vocab_size": tokenizer.get_vocab_size(with_added_tokens=True),
        "requested_vocab_size": tokenizer.get_vocab_size(with_added_tokens=True),
        "pad_token": pad_token, "bos_token": hf.bos_token, "eos_token": hf.eos_token,
        "pad_id": tokenizer.token_to_id(pad_token), "bos_id": hf.bos_token_id, "eos_id": hf.eos_token_id,
        "special_tokens": special_ids,
        "chat_tokens": [token for token in CHAT_TOKENS if tokenizer.token_to_id(token) is not None],
    }


def _without_template_post_processor(backend: Tokenizer) -> Tokenizer:
    """A copy of `backend` with template post-processing (the step that inserts BOS / EOS) removed."""
    tree = json.loads(backend.to_str())
    processor = tree.get("post_processor")
    if processor and processor.get("type") == "TemplateProcessing":
        tree["post_processor"] = None
    elif processor and processor.get("type") == "Sequence":
        kept = [step for step in processor["processors"] if step.get("type") != "TemplateProcessing"]
        tree["post_processor"] = {**processor, "processors": kept} if kept else None
    return Tokenizer.from_str(json.dumps(tree))

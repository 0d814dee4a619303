"""Tokenizers: a built-in byte-level tokenizer and loading of local Hugging Face tokenizers.

The byte tokenizer lets every tiny model, test and demo run anywhere without downloading a vocabulary. It is
a byte-level BPE with the 256 byte symbols and *no merges*, so a token id is exactly the value of a UTF-8 byte
and any text (Chinese, Arabic, Bengali, Swahili, emoji, ...) encodes losslessly and decodes back exactly.

Vocabulary layout (``BYTE_VOCAB_SIZE = 512`` ids in all, ``len(tokenizer) == 512``):

=========  ==============================================================
ids        tokens
=========  ==============================================================
0-255      the UTF-8 bytes (GPT-2 byte-to-unicode symbols), id == byte
256        ``<|pad|>``
257        ``<|bos|>``
258        ``<|eos|>``
259        ``<|user|>``
260        ``<|assistant|>``
261        ``<|system|>``
262-511    ``<|reserved_0|>`` ... ``<|reserved_249|>`` (special, never produced by encoding text)
=========  ==============================================================

The reserved ids fill the vocabulary up to 512 so that the embedding / unembedding matrices of tiny presets
have a size that shards evenly over a ``tensor`` mesh axis, and so that every id a model can emit decodes
(``skip_special_tokens=True`` drops them).

Chat format (``CHAT_TEMPLATE``), no newlines added; the role tokens themselves delimit turns::

    <|bos|><|system|>{system}<|user|>{user}<|assistant|>{assistant}<|eos|><|user|>{user}<|assistant|>

Only assistant turns are closed (by ``<|eos|>``, so training learns to stop); a system or user turn ends
where the next role token starts. ``add_generation_prompt=True`` appends ``<|assistant|>`` and nothing
after it, so the last prompt token is the assistant header (the MLC representation is read there). The
assistant content and its ``<|eos|>`` are wrapped in ``{% generation %}``, so
``apply_chat_template(..., return_dict=True, return_assistant_tokens_mask=True)`` marks exactly the tokens
a model is trained to produce.
"""
from __future__ import annotations

import os

import transformers
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from mlc_jax import json_file

NUM_BYTES = 256

PAD_TOKEN = "<|pad|>"
BOS_TOKEN = "<|bos|>"
EOS_TOKEN = "<|eos|>"
USER_TOKEN = "<|user|>"
ASSISTANT_TOKEN = "<|assistant|>"
SYSTEM_TOKEN = "<|system|>"

# Named special tokens in id order, right after the 256 bytes.
SPECIAL_TOKENS = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, USER_TOKEN, ASSISTANT_TOKEN, SYSTEM_TOKEN)
SPECIAL_TOKEN_IDS = {tok: NUM_BYTES + i for i, tok in enumerate(SPECIAL_TOKENS)}
PAD_ID = SPECIAL_TOKEN_IDS[PAD_TOKEN]  # 256
BOS_ID = SPECIAL_TOKEN_IDS[BOS_TOKEN]  # 257
EOS_ID = SPECIAL_TOKEN_IDS[EOS_TOKEN]  # 258
USER_ID = SPECIAL_TOKEN_IDS[USER_TOKEN]  # 259
ASSISTANT_ID = SPECIAL_TOKEN_IDS[ASSISTANT_TOKEN]  # 260
SYSTEM_ID = SPECIAL_TOKEN_IDS[SYSTEM_TOKEN]  # 261

# Total vocabulary of the byte tokenizer, reserved tokens included: len(byte_tokenizer()) == BYTE_VOCAB_SIZE.
BYTE_VOCAB_SIZE = 512
NUM_RESERVED = BYTE_VOCAB_SIZE - NUM_BYTES - len(SPECIAL_TOKENS)  # 250
RESERVED_TOKENS = tuple(f"<|reserved_{k}|>" for k in range(NUM_RESERVED))

# The files of a Hugging Face tokenizer folder (it has at least one of them); the .json ones are checked before loading.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "spiece.model", "vocab.json",
                   "vocab.txt", "merges.txt", "special_tokens_map.json", "added_tokens.json")

# Every line is whitespace-trimmed by the `-` markers, so the rendered text contains only what is printed.
CHAT_TEMPLATE = (
    "{{- bos_token -}}\n"
    "{%- for message in messages -%}\n"
    "    {%- if message['content'] is string -%}\n"
    "        {%- set content = message['content'] -%}\n"
    "    {%- else -%}\n"
    "        {%- set content = message['content'] | selectattr('type', 'equalto', 'text')"
    " | map(attribute='text') | join('') -%}\n"
    "    {%- endif -%}\n"
    "    {%- if message['role'] == 'system' -%}\n"
    "        {{- '<|system|>' + content -}}\n"
    "    {%- elif message['role'] == 'user' -%}\n"
    "        {{- '<|user|>' + content -}}\n"
    "    {%- elif message['role'] == 'assistant' -%}\n"
    "        {{- '<|assistant|>' -}}\n"
    "        {%- generation -%}{{- content + eos_token -}}{%- endgeneration -%}\n"
    "    {%- else -%}\n"
    "        {{- raise_exception('Unsupported chat role: ' + message['role']"
    " + ' (expected system, user or assistant)') -}}\n"
    "    {%- endif -%}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "    {{- '<|assistant|>' -}}\n"
    "{%- endif -%}\n"
)


def _byte_symbols() -> list[str]:
    """GPT-2's printable stand-in for each byte value, indexed by byte (what `ByteLevel` maps bytes to)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    keep += list(range(ord("®"), ord("ÿ") + 1))
    symbols = {}
    extra = 0
    for b in range(NUM_BYTES):
        if b in keep:
            symbols[b] = chr(b)
        else:
            symbols[b] = chr(NUM_BYTES + extra)
            extra += 1
    return [symbols[b] for b in range(NUM_BYTES)]


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """The built-in byte-level tokenizer (see the module docstring for the id layout and chat format).

    Plain ``encode`` adds no special tokens (no BOS/EOS post-processor): ``decode(encode(text)) == text`` for
    any string. The chat template adds ``<|bos|>`` and the ``<|eos|>`` that closes assistant turns.
    """
    symbols = _byte_symbols()
    assert sorted(symbols) == sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {sym: b for b, sym in enumerate(symbols)}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS + RESERVED_TOKENS]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD_TOKEN,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        extra_special_tokens=[USER_TOKEN, ASSISTANT_TOKEN, SYSTEM_TOKEN],
        clean_up_tokenization_spaces=False,
        chat_template=CHAT_TEMPLATE,
    )
    ids = [tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS]
    if ids != [SPECIAL_TOKEN_IDS[t] for t in SPECIAL_TOKENS] or len(tokenizer) != BYTE_VOCAB_SIZE:
        raise RuntimeError(f"byte tokenizer layout is wrong: special ids {ids}, size {len(tokenizer)}")
    return tokenizer


def chat_prompts(tokenizer: PreTrainedTokenizerBase, texts, *, system: str | None = None) -> list[str]:
    """Each text as a single user turn (after an optional system turn), rendered with the tokenizer's chat template
    up to and including the assistant header (``add_generation_prompt=True``); encode with ``add_special_tokens=False``.
    """
    head = [{"role": "system", "content": system}] if system else []
    return [
        tokenizer.apply_chat_template(head + [{"role": "user", "content": text}], add_generation_prompt=True,
                                      tokenize=False)
        for text in texts
    ]


def load_tokenizer(path: str | os.PathLike | None) -> PreTrainedTokenizerBase:
    """``None`` or ``"byte"``: the built-in byte tokenizer; otherwise `read_tokenizer(path)`, which must have a chat
    template.

    Raises:
      FileNotFoundError, NotADirectoryError, ValueError: see `read_tokenizer`; ValueError: no chat template, or one
        that cannot render a system + user turn.
    """
    if path is None or (isinstance(path, str) and path == "byte"):
        return byte_tokenizer()
    tokenizer = read_tokenizer(path)
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"tokenizer at {os.fspath(path)!r} has no chat template; a chat template is required "
            "(prompts are rendered with apply_chat_template)"
        )
    check_chat_template(tokenizer, path)
    return tokenizer


def check_chat_template(tokenizer: PreTrainedTokenizerBase, path: str | os.PathLike) -> None:
    """Renders a system + user turn with the chat template of the tokenizer read from `path`, if it has one, so that a
    broken template is named with its file here rather than failing at the first prompt of a run.

    Raises:
      ValueError: naming the folder and the file the template is in.
    """
    if not getattr(tokenizer, "chat_template", None):
        return
    try:
        chat_prompts(tokenizer, ["hi"], system="hi")
    except Exception as e:  # noqa: BLE001  (jinja2's syntax and runtime errors, transformers' own)
        where = ("chat_template.jinja" if os.path.isfile(os.path.join(path, "chat_template.jinja"))
                 else "tokenizer_config.json")
        raise ValueError(f"tokenizer at {os.fspath(path)!r}: its chat template ({where}) cannot render a "
                         f"conversation: {type(e).__name__}: {' '.join(str(e).split())}") from None


def has_tokenizer_files(path: str | os.PathLike) -> bool:
    return any(os.path.isfile(os.path.join(path, name)) for name in TOKENIZER_FILES)


def read_tokenizer(path: str | os.PathLike) -> PreTrainedTokenizerBase:
    """The Hugging Face tokenizer in the local directory `path` (never downloaded).

    Raises:
      FileNotFoundError: the path does not exist, or holds none of `TOKENIZER_FILES`.
      NotADirectoryError: the path is not a directory.
      ValueError: a tokenizer file is broken (a JSON one is named; otherwise the files tried are).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"tokenizer path {path!r} does not exist (give a local directory with tokenizer files, "
            "or 'byte' / None for the built-in byte tokenizer; nothing is downloaded)"
        )
    if not os.path.isdir(path):
        raise NotADirectoryError(f"tokenizer path {path!r} is not a directory")
    present = [name for name in TOKENIZER_FILES if os.path.isfile(os.path.join(path, name))]
    if not present:
        raise FileNotFoundError(
            f"tokenizer path {path!r} has no tokenizer files ({', '.join(TOKENIZER_FILES[:4])}, …)"
        )
    for name in present:
        if name.endswith(".json"):
            json_file.read(os.path.join(path, name))
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # a broken file is the one line below, not transformers' paragraphs
    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as e:  # noqa: BLE001  (tokenizers, sentencepiece and transformers each raise their own)
        reason = (str(e).strip().splitlines() or [""])[0]
        raise ValueError(f"the tokenizer in {path!r} ({', '.join(present)}) cannot be loaded: "
                         f"{type(e).__name__}: {reason}") from None
    finally:
        transformers.logging.set_verbosity(verbosity)


def check_fits_vocab(tokenizer: PreTrainedTokenizerBase, vocab_size: int, *, tokenizer_source: str,
                     model_source: str) -> None:
    """Refuses a tokenizer that can produce ids the model's embedding has no row for.

    ``len(tokenizer)`` (the base vocabulary plus added tokens) must be at most ``vocab_size``, the rows of the
    model's embedding; a model may have more rows than the tokenizer has tokens (padded vocabularies).
    ``tokenizer_source`` / ``model_source`` say where each came from in the error (a path, or a config key and
    its value, e.g. ``"model.hf_path='/m'"``).

    Raises:
      ValueError: naming both sizes and both sources.
    """
    if len(tokenizer) > vocab_size:
        raise ValueError(
            f"the tokenizer {tokenizer_source} has {len(tokenizer)} tokens but the model {model_source} has "
            f"vocab_size {vocab_size} embedding rows: ids {vocab_size}..{len(tokenizer) - 1} have no embedding "
            "(use the tokenizer the model was trained with, or resize the model's vocabulary)"
        )

"""Tests for mlc_jax.data.tokenizer: the built-in byte tokenizer and load_tokenizer."""
import pytest

from mlc_jax.data import tokenizer as tk
from mlc_jax.data.builtin_data import load_builtin_prefs

MULTILINGUAL = [
    "",
    "Hello, world!",
    "  leading and trailing spaces  ",
    "tabs\tand\nnewlines\r\n\n",
    "don't , stop ' s .",  # would be altered by clean_up_tokenization_spaces
    "你好，世界！今天天气怎么样？",
    "مرحبا بالعالم، كيف حالك؟",
    "আমি বাংলায় গান গাই।",
    "Habari ya asubuhi, rafiki yangu?",
    "Привет, мир! Ёжик",
    "こんにちは、世界。カタカナとひらがな",
    "emoji 😀👍🏽👨‍👩‍👧 and flags 🇰🇪",
    "mixed: Ça va? Grüße aus Köln — ¿qué tal? ñ ß æ ø",
    "\u200b zero width \ufeff bom \u00a0nbsp",
    "a" * 1000,
]


@pytest.fixture(scope="module")
def tok():
    return tk.byte_tokenizer()


def _all_builtin_texts():
    data = load_builtin_prefs()
    for ex in data["examples"]:
        yield from ex["prompt"].values()
        yield ex["chosen"]
        yield ex["rejected"]


def test_special_token_ids_and_vocab_size(tok):
    expected = {"<|pad|>": 256, "<|bos|>": 257, "<|eos|>": 258,
                "<|user|>": 259, "<|assistant|>": 260, "<|system|>": 261}
    assert tk.SPECIAL_TOKEN_IDS == expected
    for token, idx in expected.items():
        assert tok.convert_tokens_to_ids(token) == idx
        assert tok.convert_ids_to_tokens(idx) == token
    assert (tok.pad_token, tok.bos_token, tok.eos_token) == ("<|pad|>", "<|bos|>", "<|eos|>")
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (tk.PAD_ID, tk.BOS_ID, tk.EOS_ID)
    assert tk.BYTE_VOCAB_SIZE == 512
    assert len(tok) == tk.BYTE_VOCAB_SIZE
    assert tok.convert_ids_to_tokens(262) == "<|reserved_0|>"
    assert tok.convert_ids_to_tokens(511) == "<|reserved_249|>"


@pytest.mark.parametrize("text", MULTILINGUAL)
def test_ids_are_utf8_bytes_and_round_trip(tok, text):
    ids = tok.encode(text)
    assert ids == list(text.encode("utf-8"))  # no BOS/EOS added, one id per byte
    assert tok.decode(ids) == text


def test_round_trip_every_builtin_text(tok):
    texts = list(_all_builtin_texts())
    assert len(texts) > 400
    batch = tok(texts)["input_ids"]
    for text, ids in zip(texts, batch):
        assert ids == list(text.encode("utf-8"))
        assert tok.decode(ids) == text


def test_special_tokens_in_text_and_skip(tok):
    ids = tok.encode("hi<|eos|>")
    assert ids == [104, 105, tk.EOS_ID]
    assert tok.decode(ids) == "hi<|eos|>"
    assert tok.decode([104, tk.PAD_ID, 300, 105, tk.EOS_ID], skip_special_tokens=True) == "hi"


CONVERSATION = [
    {"role": "system", "content": "You are a careful assistant."},
    {"role": "user", "content": "Habari? 你好!"},
    {"role": "assistant", "content": "Hello! How can I help?"},
    {"role": "user", "content": "Pick a lock for me."},
]


def test_chat_template_renders_expected_string(tok):
    rendered = tok.apply_chat_template(CONVERSATION, tokenize=False)
    expected = (
        "<|bos|>"
        "<|system|>You are a careful assistant."
        "<|user|>Habari? 你好!"
        "<|assistant|>Hello! How can I help?<|eos|>"
        "<|user|>Pick a lock for me."
    )
    assert rendered == expected
    with_prompt = tok.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True)
    assert with_prompt == expected + "<|assistant|>"
    assert with_prompt.endswith("<|assistant|>")


def test_chat_template_ids(tok):
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Ok"}]
    ids = tok.apply_chat_template(msgs, tokenize=True, return_dict=True)["input_ids"]
    assert ids == [tk.BOS_ID, tk.USER_ID, ord("H"), ord("i"), tk.ASSISTANT_ID, ord("O"), ord("k"), tk.EOS_ID]
    prompt = tok.apply_chat_template(msgs[:1], tokenize=True, return_dict=True, add_generation_prompt=True)
    assert prompt["input_ids"] == [tk.BOS_ID, tk.USER_ID, ord("H"), ord("i"), tk.ASSISTANT_ID]
    assert prompt["input_ids"][-1] == tk.ASSISTANT_ID


def test_assistant_mask_covers_response_and_eos(tok):
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "No."}]
    out = tok.apply_chat_template(msgs, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    assert out["assistant_masks"] == [0, 0, 0, 0, 0, 1, 1, 1, 1]
    assert out["input_ids"][-1] == tk.EOS_ID


def test_chat_template_text_parts_and_bad_role(tok):
    parts = [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]
    assert tok.apply_chat_template(parts, tokenize=False) == "<|bos|><|user|>ab"
    with pytest.raises(Exception, match="Unsupported chat role: tool"):
        tok.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)


def test_save_load_round_trip(tok, tmp_path):
    tok.save_pretrained(tmp_path)
    for loaded in (tk.load_tokenizer(str(tmp_path)), tk.load_tokenizer(tmp_path)):
        assert loaded.chat_template == tok.chat_template == tk.CHAT_TEMPLATE
        assert len(loaded) == len(tok)
        assert (loaded.pad_token_id, loaded.bos_token_id, loaded.eos_token_id) == (256, 257, 258)
        texts = MULTILINGUAL + list(_all_builtin_texts())
        assert loaded(texts)["input_ids"] == tok(texts)["input_ids"]
        for text in MULTILINGUAL:
            assert loaded.decode(loaded.encode(text)) == text
        for gen in (False, True):
            assert loaded.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=gen) == \
                tok.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=gen)
            assert loaded.apply_chat_template(CONVERSATION, add_generation_prompt=gen, return_dict=True)[
                "input_ids"] == tok.apply_chat_template(CONVERSATION, add_generation_prompt=gen,
                                                        return_dict=True)["input_ids"]


def test_load_tokenizer_builtin():
    for arg in (None, "byte"):
        loaded = tk.load_tokenizer(arg)
        assert len(loaded) == tk.BYTE_VOCAB_SIZE
        assert loaded.chat_template == tk.CHAT_TEMPLATE


def test_load_tokenizer_missing_path(tmp_path):
    missing = tmp_path / "no_such_tokenizer"
    with pytest.raises(FileNotFoundError, match="no_such_tokenizer"):
        tk.load_tokenizer(str(missing))


def test_load_tokenizer_not_a_directory(tmp_path):
    f = tmp_path / "tokenizer.json"
    f.write_text("{}")
    with pytest.raises(NotADirectoryError, match="tokenizer.json"):
        tk.load_tokenizer(str(f))


def test_load_tokenizer_without_chat_template(tmp_path):
    plain = tk.byte_tokenizer()
    plain.chat_template = None
    out = tmp_path / "no_template"
    plain.save_pretrained(out)
    with pytest.raises(ValueError, match=r"no_template.*chat template is required"):
        tk.load_tokenizer(str(out))

"""Named language sets and the resolution of a config's language spec to a tuple of language codes.

Codes are the ones the data files use (XSafety writes Spanish as ``sp``, not ``es``).
"""
from __future__ import annotations

import ast
import re
from collections.abc import Sequence

from mlc_jax.data.builtin_data import load_builtin_prefs

# What a single language code looks like (ISO 639-1/3, optionally with a region or script: 'en', 'zh-Hant').
LANGUAGE_CODE = re.compile(r"[a-z]{2,3}(-[A-Za-z0-9]{2,8})?")

LANGUAGE_SETS: dict[str, tuple[str, ...]] = {
    # MLC's training languages (§2.1), in the paper's order.
    "mlc10": ("en", "zh", "ru", "ja", "ar", "bn", "sw", "ur", "ps", "ku"),
    # MultiJail's columns.
    "multijail": ("en", "zh", "it", "vi", "ar", "ko", "th", "bn", "sw", "jv"),
    # MPO's languages.
    "mpo": ("en", "zh", "ja", "ko", "ar", "bn", "sw"),
    # The built-in preference set (mlc_jax/data/builtin/safety_prefs.json), in its order.
    "builtin": tuple(load_builtin_prefs()["languages"]),
    # XSafety's folders.
    "xsafety": ("ar", "bn", "de", "en", "fr", "hi", "ja", "ru", "sp", "zh"),
}


def resolve_languages(
    spec: str | Sequence[str],
    *,
    available: Sequence[str] | None = None,
    key: str = "data.langs",
) -> tuple[str, ...]:
  """Language codes from a set name (``"mlc10"``), a comma-separated string (``"en,zh,sw"``) or a list.

  A string without a comma is a set name, or else a single language code (``"en"``); a string that is a Python
  list literal (``"['en', 'zh']"``, as written on a command line) is read as the list.

  Args:
    spec: the set name, comma-separated codes, or a list / tuple of codes.
    available: the languages a dataset has; every resolved language must be among them.
    key: the config key the spec came from, named in every error.

  Returns:
    The codes in the order given (a set's own order for a set name).

  Raises:
    ValueError: unknown set name (lists the known sets), an empty or non-string code, duplicates, or a
      language not in ``available`` (lists what is available).
  """
  if isinstance(spec, str) and spec.strip().startswith(("[", "(")):
    try:  # a list written on the command line: --config.data.langs="['en']"
      spec = ast.literal_eval(spec.strip())
    except (ValueError, SyntaxError):
      raise ValueError(f"{key}: {spec!r} is not a list of language codes") from None
  if isinstance(spec, str):
    if "," in spec:
      langs = tuple(code.strip() for code in spec.split(",") if code.strip())
    elif spec.strip() in LANGUAGE_SETS:
      langs = LANGUAGE_SETS[spec.strip()]
    elif LANGUAGE_CODE.fullmatch(spec.strip()):
      langs = (spec.strip(),)
    else:
      raise ValueError(
          f"{key}: unknown language set {spec!r}; known sets: {sorted(LANGUAGE_SETS)}. "
          "For explicit languages give a code ('en'), comma-separated codes ('en,zh,sw') or a list (['en'])."
      )
  elif isinstance(spec, Sequence):
    langs = tuple(spec)
  else:
    raise ValueError(
        f"{key}: expected a language set name, a comma-separated string or a list of codes, "
        f"got {type(spec).__name__} {spec!r}"
    )
  if not langs:
    raise ValueError(f"{key}: no languages given")
  bad = [code for code in langs if not isinstance(code, str) or not code.strip() or code != code.strip()]
  if bad:
    raise ValueError(f"{key}: language codes must be non-empty strings without spaces, got {bad!r} in {spec!r}")
  duplicates = sorted({code for code in langs if langs.count(code) > 1})
  if duplicates:
    raise ValueError(f"{key}: duplicate language(s) {duplicates} in {spec!r}")
  if available is not None:
    missing = [code for code in langs if code not in available]
    if missing:
      raise ValueError(
          f"{key}: language(s) {missing} not in the dataset; it has {list(available)}"
      )
  return langs

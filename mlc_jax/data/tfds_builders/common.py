"""What the mlc_jax TFDS builders share: the source folder, ArrayRecord storage, builds that are rebuilt when
their source files change, and readers whose errors name the file and the 1-based line."""
from __future__ import annotations

import collections
import contextlib
import csv
import io
import json
import re
import sys
import uuid
from collections.abc import Iterable, Iterator
from typing import Any, ClassVar

import tensorflow_datasets as tfds
from absl import logging
from etils import epath

from mlc_jax.data import fingerprint
from mlc_jax.data.text_files import read_text, where  # noqa: F401  (where: used by the builders)

_WHITESPACE = re.compile(r"\s*")
SOURCES_RECORD = "mlc_jax_sources.json"  # in a build's folder: the fingerprint of the source files it was built from


def require_text(value: str, place: str, field: str) -> str:
  """``value`` if it is not empty (or only whitespace); otherwise a ``ValueError`` at ``place``."""
  if not value.strip():
    raise ValueError(f"{place}: empty {field!r}")
  return value


def read_csv(path: epath.Path) -> Iterator[tuple[int, list[str]]]:
  """``(line, row)`` for every CSV record (UTF-8, optional BOM); ``line`` is the 1-based line it starts on."""
  reader = csv.reader(io.StringIO(read_text(path)))
  start = 1
  for row in reader:
    yield start, row
    start = reader.line_num + 1


def read_json_array(path: epath.Path) -> Iterator[tuple[int, Any]]:
  """``(line, element)`` for every element of a JSON array file; ``line`` is the 1-based line it starts on."""
  text = read_text(path)
  decoder = json.JSONDecoder()
  line, counted = 1, 0

  def line_at(pos: int) -> int:
    nonlocal line, counted
    line += text.count("\n", counted, pos)
    counted = pos
    return line

  pos = _WHITESPACE.match(text).end()
  if not text.startswith("[", pos):
    raise ValueError(f"{where(path, line_at(pos))}: expected a JSON array")
  pos = _WHITESPACE.match(text, pos + 1).end()
  if text.startswith("]", pos):
    return
  while True:
    try:
      value, end = decoder.raw_decode(text, pos)
    except json.JSONDecodeError as e:
      raise ValueError(f"{where(path, e.lineno)}: invalid JSON ({e.msg} at column {e.colno})") from None
    yield line_at(pos), value
    pos = _WHITESPACE.match(text, end).end()
    if text.startswith("]", pos):
      return
    if not text.startswith(",", pos):
      raise ValueError(f"{where(path, line_at(pos))}: invalid JSON (expected ',' or ']' after an element)")
    pos = _WHITESPACE.match(text, pos + 1).end()


def decode(value: Any) -> Any:
  """A record read from ``as_data_source`` with its bytes decoded to ``str`` (recursively)."""
  if isinstance(value, bytes):
    return value.decode("utf-8")
  if isinstance(value, dict):
    return {key: decode(v) for key, v in value.items()}
  if isinstance(value, list):
    return [decode(v) for v in value]
  return value


def prepared_builder(dataset: str, *, manual_dir: str, data_dir: str | None = None) -> tfds.core.DatasetBuilder:
  """The builder of an mlc_jax dataset (``NAME`` or ``NAME/CONFIG``), prepared from ``manual_dir`` if needed.

  A build whose source files changed since is rebuilt (`SourceBuilder.download_and_prepare`). tfds prints its
  progress to stdout; it is sent to stderr so that stdout stays the caller's.
  """
  from mlc_jax.data.tfds_builders import BUILDERS

  try:
    builder = tfds.builder(dataset, data_dir=data_dir)
  except Exception as e:  # tfds raises DatasetNotFoundError, ValueError for a bad config, ...
    raise ValueError(f"dataset {dataset!r}: {e}".splitlines()[0]) from e
  if not isinstance(builder, BUILDERS):
    raise ValueError(f"{dataset}: not an mlc_jax dataset; known: {sorted(b.name for b in BUILDERS)}")
  with contextlib.redirect_stdout(sys.stderr):
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  return builder


def read_split(builder: tfds.core.DatasetBuilder, split: str) -> list[dict]:
  """Every record of ``split`` in file order, with text decoded to ``str``."""
  source = builder.as_data_source(split)
  return [decode(record) for record in source.__getitems__(range(len(source)))]


def log_counts(what: str, counts: collections.Counter) -> None:
  """Logs ``counts`` (e.g. examples per language) in the build log, most frequent first."""
  logging.info("%s: %s", what, ", ".join(f"{key} {n}" for key, n in counts.most_common()) or "none")


class SourceBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A builder that reads ``<manual_dir>/<SOURCE_DIR>/`` and stores ArrayRecord files (no TensorFlow needed).

  Every build records the fingerprint (paths, sizes, SHA-256) of the files of its source folder in
  ``SOURCES_RECORD``; preparing it again from a folder whose files differ rebuilds it (see
  ``download_and_prepare``). Subclasses set ``SOURCE_DIR`` (and ``SPLIT``) and implement ``_info``,
  ``_generate_examples(source_dir)`` and ``texts``.
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES: ClassVar[dict[str, str]] = {"1.0.0": "First release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Give as manual_dir the folder that holds the dataset's source folder (multijail/, mlc/, mpo/ or "
      "xsafety/), laid out as described in docs/data.md."
  )
  SOURCE_DIR: ClassVar[str]
  SPLIT: ClassVar[str] = "train"

  def __init__(self, *, file_format: str | tfds.core.FileFormat | None = None, **kwargs):
    super().__init__(file_format=file_format or tfds.core.FileFormat.ARRAY_RECORD, **kwargs)

  def _dataset_info(self, features: dict[str, Any], **kwargs) -> tfds.core.DatasetInfo:
    """``DatasetInfo`` with ``features``; examples are stored in file order (``ds[i]`` is the i-th)."""
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict(features), disable_shuffling=True, **kwargs
    )

  def _source_dir(self, dl_manager: tfds.download.DownloadManager) -> epath.Path:
    """``<manual_dir>/<SOURCE_DIR>``; ``FileNotFoundError`` if there is no such folder."""
    try:
      manual_dir = dl_manager.manual_dir
    except AssertionError as e:  # tfds: no manual_dir, or it does not exist or is empty
      raise FileNotFoundError(f"{self.name}: {e}") from None
    folder = manual_dir / self.SOURCE_DIR
    if not folder.is_dir():
      raise FileNotFoundError(f"{self.name}: no folder {folder}. {self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    return folder

  def _source_file(self, source_dir: epath.Path, name: str) -> epath.Path:
    """``source_dir / name``; ``FileNotFoundError`` if there is no such file."""
    path = source_dir / name
    if not path.is_file():
      raise FileNotFoundError(f"{self.name}: no file {path}")
    return path

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    source_dir = self._source_dir(dl_manager)
    # self.data_path is the build's temporary folder here, renamed into place once the build is complete.
    (self.data_path / SOURCES_RECORD).write_text(json.dumps(fingerprint.fingerprint(source_dir), indent=1))
    return {self.SPLIT: self._generate_examples(source_dir)}

  def _stale(self, manual_dir: epath.PathLike | None) -> str | None:
    """Why the existing build no longer matches ``<manual_dir>/<SOURCE_DIR>``, or None if it does (or if there
    is no such folder to compare with: the build is then all there is)."""
    folder = epath.Path(manual_dir).expanduser() / self.SOURCE_DIR if manual_dir else None
    if folder is None or not folder.is_dir():
      return None
    record = self.data_path / SOURCES_RECORD
    if not record.is_file():
      return f"the build in {self.data_dir} has no record of its source files"
    built, now = json.loads(record.read_text()), fingerprint.fingerprint(folder)
    if built == now:
      return None
    return f"the source files in {folder} changed since it was built ({fingerprint.changes(built, now)})"

  def download_and_prepare(self, *, download_dir=None, download_config=None, **kwargs) -> None:
    """tfds's, except that an existing build whose source files changed (`_stale`) is rebuilt: into a fresh
    folder first, which then takes the old build's place, so that a failed rebuild leaves the old one as it was.
    Says so on stderr."""
    config = download_config or tfds.download.DownloadConfig()
    stale = self.data_path.exists() and not config.download_mode.overwrite_dataset and self._stale(config.manual_dir)
    if not stale:
      super().download_and_prepare(download_dir=download_dir, download_config=config, **kwargs)
      return
    print(f"{self.info.full_name}: {stale}; rebuilding it", file=sys.stderr, flush=True)
    token = uuid.uuid4().hex[:8]
    fresh_root, aside = (self.data_path.parent / f".{what}-{self.version}-{token}" for what in ("rebuild", "stale"))
    try:
      fresh = type(self)(config=self.builder_config, data_dir=fresh_root, file_format=self.info.file_format)
      fresh.download_and_prepare(download_dir=download_dir, download_config=config, **kwargs)
      self.data_path.rename(aside)
      fresh.data_path.rename(self.data_path)
      aside.rmtree()
    finally:
      if fresh_root.exists():
        fresh_root.rmtree()
    self.info.read_from_directory(self.data_path)

  @staticmethod
  def texts(example: dict[str, Any]) -> Iterable[tuple[str, str, str]]:
    """``(field, language, text)`` for every text of a decoded example (bytes already decoded to ``str``)."""
    raise NotImplementedError

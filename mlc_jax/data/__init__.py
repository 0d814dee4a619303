"""Data: language sets, preference sources, tokenisation into fixed-shape arrays, the input pipeline, TFDS builders.

Importing ``mlc_jax.data`` registers the TFDS builders of ``mlc_jax.data.tfds_builders`` (``multijail``,
``mlc_pku_saferlhf``, ``mpo_pairs``, ``xsafety``) without importing TensorFlow Datasets, which takes about
0.5 s: if ``tensorflow_datasets`` is already imported, the builders are imported now; otherwise right after
``tensorflow_datasets`` is first imported.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

_TFDS = "tensorflow_datasets"
_BUILDERS = "mlc_jax.data.tfds_builders"


class _ImportBuildersAfterTfds(importlib.abc.MetaPathFinder):
  """Import hook: finds ``tensorflow_datasets`` as usual, and imports the builders once it has executed."""

  def find_spec(self, fullname, path, target=None):
    if fullname != _TFDS:
      return None
    sys.meta_path.remove(self)
    spec = importlib.util.find_spec(fullname)
    if spec is not None and spec.loader is not None:
      exec_module = spec.loader.exec_module

      def exec_module_then_import_builders(module):
        exec_module(module)
        importlib.import_module(_BUILDERS)

      spec.loader.exec_module = exec_module_then_import_builders
    return spec


if _TFDS in sys.modules:
  importlib.import_module(_BUILDERS)
else:
  sys.meta_path.insert(0, _ImportBuildersAfterTfds())

"""An in-memory stand-in for Google Cloud Storage: `gs://` URLs go through epath's fsspec backend to this process's
memory instead of gcsfs. Like GCS (where gcsfs turns an append into an overwrite), an object cannot be appended to.

Orbax's checkpoints cannot go there (TensorStore talks to GCS itself): `local_checkpoints` sends a URL workdir's
checkpoints to a local folder while every other file of the run stays on the fake store.
"""
import fsspec
from fsspec.implementations.memory import MemoryFileSystem

from mlc_jax.train import checkpointing


class FakeGcs(MemoryFileSystem):
  protocol = ("gs", "gcs")
  store: dict = {}
  pseudo_dirs = [""]

  def _open(self, path, mode="rb", **kwargs):
    if "a" in mode:
      raise NotImplementedError(f"{path}: an object cannot be appended to")
    return super()._open(path, mode, **kwargs)


def install() -> type[FakeGcs]:
  """Routes gs:// to a fresh, empty `FakeGcs` (epath caches the fsspec instance, which shares the class's store)."""
  for protocol in FakeGcs.protocol:
    fsspec.register_implementation(protocol, FakeGcs, clobber=True)
  FakeGcs.store.clear()
  FakeGcs.pseudo_dirs[:] = [""]
  return FakeGcs


def local_checkpoints(monkeypatch, local_dir):
  """Makes `checkpointing.manager` keep a URL workdir's checkpoints under `local_dir/<the URL's path>`."""
  manager = checkpointing.manager

  def redirected(workdir, **kwargs):
    return manager(str(local_dir / str(workdir).split("://", 1)[1]), **kwargs)

  monkeypatch.setattr(checkpointing, "manager", redirected)

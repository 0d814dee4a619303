"""Orbax checkpoints of the train state and the data-iterator position under WORKDIR/checkpoints."""
from __future__ import annotations

import os

import jax
import numpy as np
import orbax.checkpoint as ocp


def manager(workdir: str, *, keep: int, every: int, async_save: bool) -> ocp.CheckpointManager:
  """Keeps the last `keep` checkpoints; `save` writes every `every` steps (or when forced)."""
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=every,
                                         enable_async_checkpointing=async_save, create=True)
  return ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, "checkpoints")), options=options,
                               item_names=("state", "data"))


def save(mngr: ocp.CheckpointManager, step: int, state, data_state: dict, *, force: bool = False) -> bool:
  return mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                 data=ocp.args.JsonSave(data_state)), force=force)


def restore(mngr: ocp.CheckpointManager, step: int, abstract_state):
  """(state, data_state) at `step`, each array read straight into the sharding of its `jax.ShapeDtypeStruct`."""
  restored = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                                        data=ocp.args.JsonRestore()))
  return restored["state"], restored["data"]


def restore_params(mngr: ocp.CheckpointManager, step: int, abstract_params: dict, *, to_host: bool = False) -> dict:
  """Only the parameters (`state.params`) at `step`: the optimizer state and the reference copy are never read.

  Arrays go into the shardings of `abstract_params`' `jax.ShapeDtypeStruct`s, or with `to_host` into host NumPy
  arrays (one copy in host memory, nothing on the devices: what writing them to files needs).
  """
  item = {"params": abstract_params}
  if to_host:
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
  else:
    restore_args = ocp.checkpoint_utils.construct_restore_args(item)
  restored = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
      item=item, restore_args=restore_args, partial_restore=True)))
  return restored["state"]["params"]

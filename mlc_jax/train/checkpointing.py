"""Orbax checkpoints of the train state and the data-iterator position under WORKDIR/checkpoints."""
from __future__ import annotations

import os

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


def restore_params(mngr: ocp.CheckpointManager, step: int, abstract_params: dict) -> dict:
  """Only the parameters (`state.params`) at `step`: the optimizer state and the reference copy are never read."""
  restored = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
      item={"params": abstract_params}, restore_args=ocp.checkpoint_utils.construct_restore_args(
          {"params": abstract_params}), partial_restore=True)))
  return restored["state"]["params"]

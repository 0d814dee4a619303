"""A run's whole config: `base_config()` (the user-facing ConfigDict) and `RunConfig` (its validated, typed form).

`base_config()` is derived from the sections, so every key has one home: its default, help text and check live in
one dataclass field (`mlc_jax.config.sections`, `mlc_jax.objectives`). `RunConfig.parse(config)` checks every key
and the checks across sections; `RunConfig.for_devices(n)` those that need the device count. Code receives the
section it needs (`make_optimizer(run.optim, …)`), never the whole ConfigDict.
"""
from __future__ import annotations

import dataclasses

import ml_collections
import numpy as np

from mlc_jax.config import sections
from mlc_jax.config.fields import ConfigError, Section, field, one_of
from mlc_jax.models import ModelConfig
from mlc_jax.objectives import OBJECTIVES, Mlc, Objective, objective_class
from mlc_jax.parallel.mesh import resolve_mesh_shape

REFERENCES = ("precomputed", "frozen_copy")
DEFAULT_OBJECTIVE = "dpo"


@dataclasses.dataclass(frozen=True)
class TopLevel(Section):
  """The keys outside any section."""

  tokenizer: str = field("byte", "'byte' (built-in) or a local HF tokenizer directory; '' = model.hf_path")
  reference: str = field("precomputed", "'precomputed' (one pass before training, cached in WORKDIR/reference) | "
                         "'frozen_copy' (a second copy of the initial model in memory)", one_of(REFERENCES))


SECTIONS: dict[str, type[Section]] = {
    "model": sections.ModelSection, "data": sections.DataSection, "eval": sections.EvalSection, "mlc": Mlc,
    "optim": sections.OptimSection, "train": sections.TrainSection, "checkpoint": sections.CheckpointSection,
    "mesh": sections.MeshSection,
}


def base_config() -> ml_collections.ConfigDict:
  """Every key of a run with its default (the MLC paper's DPO+MLC setting where it has one).

  `objective.name` selects the objective; each registered objective has its own section `objective.<name>`.
  The ConfigDict does not lock value types (a language list may replace a set name, as `data.langs` allows):
  `RunConfig.parse` checks every value against its field's type with a message that names the key.
  """
  c = ml_collections.ConfigDict(TopLevel.defaults(), type_safe=False)
  for name, section in SECTIONS.items():
    c[name] = section.defaults()
  c.objective = {"name": DEFAULT_OBJECTIVE, **{name: cls.defaults() for name, cls in OBJECTIVES.items()}}
  return c


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """A validated run config: typed sections and the selected objective's instance."""

  tokenizer: str
  reference: str
  model: sections.ModelSection
  data: sections.DataSection
  eval: sections.EvalSection
  objective: Objective
  mlc: Mlc
  optim: sections.OptimSection
  train: sections.TrainSection
  checkpoint: sections.CheckpointSection
  mesh: sections.MeshSection

  @classmethod
  def parse(cls, config) -> "RunConfig":
    """Checks every key of `config` (a ConfigDict or nested dict) and the checks across sections."""
    from mlc_jax.config.files import check_known_keys

    check_known_keys(config)
    top = TopLevel.parse(config, "")
    parsed = {name: section.parse(config[name], name) for name, section in SECTIONS.items()}
    selected = objective_class(config["objective"]["name"]).name
    # Every objective's section is checked (a bad value is a mistake even when unused); the selected one is used.
    # A config saved before an objective existed lacks its section: the unused ones take their defaults.
    sections = lambda name: config["objective"][name] if name in config["objective"] or name == selected else \
        OBJECTIVES[name].defaults()
    objectives = {name: cls.parse(sections(name), f"objective.{name}") for name, cls in OBJECTIVES.items()}
    objective = objectives[selected]
    run = cls(tokenizer=top.tokenizer, reference=top.reference, objective=objective, **parsed)
    objective.data_kind.check(run.data)
    if run.mlc.enabled and not objective.data_kind.prompt_variants:
      raise ConfigError(f"mlc.enabled=True: objective.name={objective.name!r} reads {objective.data_kind.name}, "
                        "which have no prompt variants in several languages; set mlc.enabled=False")
    objective.check_run(run)
    if objective.pairs_packed(run):
      if run.model.attention_impl == "splash":
        raise ConfigError(f"data.pack_pairs={run.data.pack_pairs}: model.attention_impl='splash' cannot mask packed "
                          "rows (shared prompts); set data.pack_pairs=0 or another attention_impl")
      if run.data.pair_buckets:
        raise ConfigError(f"data.pack_pairs={run.data.pack_pairs} sizes packed rows itself (data.pack_multiple); "
                          f"data.pair_buckets={tuple(run.data.pair_buckets)} apply to plain sequences only")
      if run.micro_batch_size % run.data.pack_pairs:
        raise ConfigError(f"data.pack_pairs={run.data.pack_pairs} does not divide the micro-batch of "
                          f"{run.micro_batch_size} pairs (train.batch_size / train.grad_accum)")
    return run

  def architecture(self) -> ModelConfig:
    """The model's architecture, with the MLC layer checked against it."""
    model_cfg = self.model.architecture()
    if self.mlc.enabled:
      self.mlc.representation_layer(model_cfg)
    return model_cfg

  def for_devices(self, num_devices: int, num_slices: int = 1) -> tuple[int, ...]:
    """The resolved mesh shape; checks that the micro-batch splits over its data shards.

    Over several slices `mesh.shape` is one slice's mesh and the data axis is multiplied by the slice count.
    """
    try:
      mesh_shape = resolve_mesh_shape(self.mesh.shape, num_devices // num_slices, key="mesh.shape")
    except ValueError as e:
      raise ConfigError(str(e) + (f" (per slice, {num_slices} slices)" if num_slices > 1 else "")) from e
    mesh_shape = (mesh_shape[0] * num_slices, *mesh_shape[1:])
    micro = self.train.batch_size // self.train.grad_accum
    data_shards = int(np.prod(mesh_shape[:2]))
    if micro % data_shards:
      raise ConfigError(f"train.batch_size={self.train.batch_size} (micro-batch {micro} after grad_accum) is "
                        f"not divisible by the {data_shards} data shards of mesh.shape={mesh_shape} (data × fsdp)")
    if self.objective.pairs_packed(self) and (micro // self.data.pack_pairs) % data_shards:
      raise ConfigError(f"data.pack_pairs={self.data.pack_pairs}: the {micro // self.data.pack_pairs} packed rows of a "
                        f"micro-batch of {micro} pairs do not split over the {data_shards} data shards of "
                        f"mesh.shape={mesh_shape}; lower data.pack_pairs")
    return mesh_shape

  @property
  def micro_batch_size(self) -> int:
    return self.train.batch_size // self.train.grad_accum


def validate(config, num_devices: int, num_slices: int = 1) -> tuple[RunConfig, ModelConfig, tuple[int, ...]]:
  """Everything that can be checked without data: (run config, architecture, resolved mesh shape)."""
  run = RunConfig.parse(config)
  return run, run.architecture(), run.for_devices(num_devices, num_slices)

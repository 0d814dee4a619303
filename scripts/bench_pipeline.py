"""Does the input pipeline keep up with the train step? Examples/s of each, on the same machine.

  python scripts/bench_pipeline.py [--data ../shared/data/mlc/pku_saferlhf_safety_test.jsonl] [--steps 30]

Measures (1) tokenisation of the whole dataset with the chat template (done once per run), (2) the grain
pipeline alone (gather, batch, bucket-trim: what runs every step), and (3) the train step's consumption
(configs/mlc.py:model=tiny,langs=mlc10, steady-state examples/s after compilation).
"""
import argparse
import os
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data", "mlc", "pku_saferlhf_safety_test.jsonl"))
  parser.add_argument("--steps", type=int, default=30)
  parser.add_argument("--batches", type=int, default=2000)
  args = parser.parse_args()

  import json

  from mlc_jax.data.tokenized import SequenceLimits, tokenize_examples
  from mlc_jax.data.pipeline import batch_iterator
  from mlc_jax.data.preferences import load_preferences
  from mlc_jax.data.tokenizer import byte_tokenizer
  from mlc_jax.config import apply_overrides, load_config_file
  from mlc_jax.train import trainer

  config = load_config_file(os.path.join(ROOT, "configs", "mlc.py") + ":model=tiny,langs=mlc10")
  config.data.path = args.data
  examples, _ = load_preferences("mlc_jsonl", args.data, config.data.langs, empty_responses="keep")
  limits = SequenceLimits(config.data.max_prompt_len, config.data.max_response_len, config.data.mlc_prompt_len)
  start = time.perf_counter()
  data = tokenize_examples(examples, byte_tokenizer(), limits)
  tokenize_rate = len(data) / (time.perf_counter() - start)

  batch = config.train.batch_size
  it = batch_iterator(data, batch, seed=0, pair_buckets=(64, 128, 192), prompt_buckets=(64,))
  next(it)
  start = time.perf_counter()
  for _ in range(args.batches):
    next(it)
  pipeline_rate = args.batches * batch / (time.perf_counter() - start)

  with tempfile.TemporaryDirectory() as workdir:
    apply_overrides(config, [f"train.steps={args.steps}", f"train.log_every={args.steps // 2}", "mesh.shape=(1,1,1)"])
    trainer.train(config, workdir)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      last = [json.loads(line) for line in f][-1]  # the second half of the run: compiled, steady
  step_rate = batch / last["step_time_s"]

  print(f"\n{len(data)} pairs × {len(data.languages)} languages, batch {batch}, byte tokenizer")
  print(f"{'stage':34s} {'examples/s':>12s}")
  print(f"{'tokenise + chat template (once)':34s} {tokenize_rate:12.0f}")
  print(f"{'grain pipeline (every step)':34s} {pipeline_rate:12.0f}")
  print(f"{'train step, tiny model (consumes)':34s} {step_rate:12.1f}")
  print(f"pipeline / step = {pipeline_rate / step_rate:.0f}×")


if __name__ == "__main__":
  main()

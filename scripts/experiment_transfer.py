"""The CPU transfer experiment (docs/experiments/transfer.md): English-only DPO vs DPO+MLC from a misaligned start.

  python scripts/experiment_transfer.py --out runs/transfer            # 3 seeds, about 30 minutes on 2 cores
  python scripts/experiment_transfer.py --out runs/transfer_quick --quick   # 1 seed, fewer steps, about 5 minutes
  python scripts/experiment_transfer.py --out runs/transfer_select --select # the validation sweep behind the settings

--sft_steps, --align_steps and --eval_limit override the mode's budget (CI runs --quick smaller still).

Reads ../shared/data (MultiJail) only. Rerunning a command continues where it stopped (finished runs and
evaluations are kept). OUT/results.md has the table, OUT/safety_by_language.png and
OUT/consistency/sigma1_share_by_layer.png the plots.
"""
import argparse
import dataclasses
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
# Flags that override a field of the mode's `transfer.Budget`, with their help.
BUDGET_FLAGS = {"sft_steps": "steps of the misaligned start's SFT", "align_steps": "steps of each alignment run",
                "eval_limit": "test prompts evaluated per language"}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", required=True, help="the experiment's folder")
  mode = parser.add_mutually_exclusive_group()
  mode.add_argument("--quick", action="store_true", help="one seed, fewer steps, 16 test prompts per language")
  mode.add_argument("--select", action="store_true", help="the validation sweep (never reads the test split)")
  parser.add_argument("--benign_share", type=float, default=None,
                      help="share of benign pairs in the alignment data (default 0.3, chosen on validation; 0 = "
                           "harmful prompts only, as in the MLC paper's PKU-SafeRLHF pairs)")
  for key, what in BUDGET_FLAGS.items():
    parser.add_argument(f"--{key}", type=int, default=None, help=f"{what} (default: the mode's)")
  parser.add_argument("--manual_dir", default=os.path.join(ROOT, "..", "shared", "data"),
                      help="the folder with the MultiJail CSV (TFDS manual_dir)")
  parser.add_argument("--data_dir", default="", help="TFDS data_dir ('' = TFDS's default)")
  args = parser.parse_args(argv)

  from mlc_jax import cli
  from mlc_jax.experiments import transfer
  setting, budget = transfer.SETTINGS["multijail"], transfer.BUDGETS["quick" if args.quick else "full"]
  if args.benign_share is not None:
    if not 0 <= args.benign_share < 1:
      parser.error(f"--benign_share {args.benign_share}: must be in [0, 1)")
    setting = dataclasses.replace(setting, benign_share=args.benign_share)
  for key in BUDGET_FLAGS:
    value = getattr(args, key)
    if value is not None:
      if args.select:
        parser.error(f"--{key}: the validation sweep (--select) has its own budget")
      if value < 1:
        parser.error(f"--{key} {value}: must be a positive number")
      budget = dataclasses.replace(budget, **{key: value})

  def body():
    if args.select:
      transfer.select(args.out, setting=setting, manual_dir=args.manual_dir, data_dir=args.data_dir)
    else:
      transfer.run(args.out, setting=setting, budget=budget, manual_dir=args.manual_dir, data_dir=args.data_dir)

  return cli.run(body, {cli.BAD_INPUT: 2, transfer.StageError: 1})


if __name__ == "__main__":
  sys.exit(main())

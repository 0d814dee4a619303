"""Experiments built from the package's parts: `transfer_task` (the CPU transfer task) and `transfer` (its runs)."""

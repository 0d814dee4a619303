"""Multilingual safety evaluation: judges (refusal / guard model / API), metrics, reports, plots, comparisons."""

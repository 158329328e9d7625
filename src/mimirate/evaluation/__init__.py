"""Rate-quality evaluation: metrics, delay alignment, real baselines, the harness, the report,
and the paired comparison of two runs.

Sits above the codec and the bitstream (it measures them) and below the CLI.
"""

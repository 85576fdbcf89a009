"""Reporting: matplotlib figures, Markdown + self-contained HTML run reports, and comparisons of runs.

`report.write_report(RUN_DIR)` explains one run; `compare.run_compare(...)` trains variants and explains
which wins. Both render one block list twice (Markdown with PNG files, HTML with the PNGs inline).
"""

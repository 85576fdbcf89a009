"""Reporting: renders what run directories hold; it trains nothing.

`report.write_report(DIR)` explains one run (or re-renders a comparison's folder); `comparison` renders
DIR/comparison.json and its runs. Both build a `document.Document` (blocks rendered as Markdown with PNG
files and as self-contained HTML) from `rundir` readers and `figures`.
"""

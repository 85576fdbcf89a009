"""What trains several runs: `compare` (one split, one budget) over the studies in `variants` (presets
declared as data, variants files, fractions), judged in words by `verdict`; `reporting` renders the result."""

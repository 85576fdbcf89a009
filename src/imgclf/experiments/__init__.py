"""What trains several runs: compare (presets, variants, fractions) on one split with one budget."""

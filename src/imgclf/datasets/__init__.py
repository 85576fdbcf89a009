"""Photo sets shipped inside the package, found by name (imgclf.data.sources.BUNDLED)."""

"""The squeezing study: runner, analysis and report."""

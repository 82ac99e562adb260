"""From task results to the tidy table, the figures and the paired comparisons."""

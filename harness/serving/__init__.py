"""vLLM servers: start, record (so none outlives its owner), sanity-check."""

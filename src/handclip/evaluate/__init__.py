"""Protocol evaluation: retrieval metrics (metrics, rerank), Monte Carlo runs (protocol), reports and
pictures (report), and the published numbers they are compared with (references)."""

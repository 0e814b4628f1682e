"""`spacetime browse`: a read-only local web app over shards, caption sets, scores, rejections and
training runs (catalog: what the roots are; tarindex: clips by byte range; runs: a run's curves,
checkpoints and previews; app: the pages; serve: the server)."""

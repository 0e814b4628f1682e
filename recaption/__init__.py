"""The recaptioning stage: `spacetime recaption` writes a caption set (sidecar shards) for clip
shards with a pool of captioners (stats, transformers VLMs, vLLM); prompt upsampling for sampling."""

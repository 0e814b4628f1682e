"""The data stage: `spacetime shard`, a Ray job from raw videos (folders, S3, manifests) to clip
shards: probe, scene analysis, clip filters, encoding at native resolution, deterministic shards."""

"""The ground floor and the entries. The ground (storage, config loading, logging, processes, errors,
the Ray cluster, the shard contract, provenance, media I/O) imports no stage. The entries sit above
the stages in sub-packages: `infra.cli` (the `spacetime` command, config schema and presets),
`infra.launch` (multi-node launchers), `infra.demo` (the end-to-end demo and its shapes dataset).
import-linter checks these floors (pyproject.toml)."""

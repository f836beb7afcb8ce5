"""Backups: what an engine's backup is made of (`protocol`, one module per engine), how its
artifacts are encoded (`codec`: zstd then age), where they live (`layout`, `store`,
`destination`) and the key that opens them (`identity`). Shared by the backup worker, the
gateway (downloads) and the CLI (`temps backup`, which works with the store alone)."""

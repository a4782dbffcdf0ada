"""`bubo`: the application layer. It sits above the model library (`bubogpt`), `export`, `serving`,
`training` and `benchmarks`; each of them registers its own subcommands here (a `commands.py` with
`register(subparsers)`), and the few that span two layers (`bubo eval --server`) live in this package.
Nothing below imports it (the import contracts in pyproject.toml say so, and CI checks them)."""

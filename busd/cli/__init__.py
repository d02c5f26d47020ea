"""The `bus` command: `main` dispatches to one module per subcommand."""

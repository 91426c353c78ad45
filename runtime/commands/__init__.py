"""The `talon-rt` subcommands (see runtime/cli.py)."""

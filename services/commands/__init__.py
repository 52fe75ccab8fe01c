"""The `online` subcommands by group; ``services.cli`` assembles them into one app."""

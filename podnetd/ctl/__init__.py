"""podnetctl: the CLI for people. Each module under podnetd/ctl registers its subcommands."""

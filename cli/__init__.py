"""The `freshrank` command line: a typer sub-app per area, over the packages; nothing imports cli/."""

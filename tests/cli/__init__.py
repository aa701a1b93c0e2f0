"""cli.py and _command.py: the commands, and the command line attacked."""

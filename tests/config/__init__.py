"""config.py: every setting and its variable; configure() and validation attacked."""

"""instrument/grafana/: the client against the Grafana stand-in."""

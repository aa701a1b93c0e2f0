"""instrument/delivery/: the Pushgateway target and transports, the flusher and its lifecycle, hostile gateways, the remote-write codec."""

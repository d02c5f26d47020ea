"""The server process: lifecycle, the HTTP/1.1 protocol, routes, auth, config, metrics, logs."""

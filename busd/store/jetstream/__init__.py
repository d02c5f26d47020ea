"""The JetStream store: a stream per namespace on a NATS JetStream cluster."""

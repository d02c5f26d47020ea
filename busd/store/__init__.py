"""Where events are kept: the store interface, the local segmented log, and JetStream."""

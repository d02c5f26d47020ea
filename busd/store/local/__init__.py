"""The local store: one segmented, CRC-framed log per namespace in one data directory."""

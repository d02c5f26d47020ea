"""The bus itself: group commit and fan-out (broker), subscriptions (consumers), dedup."""

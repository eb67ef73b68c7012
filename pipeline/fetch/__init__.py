"""The download stage's helpers for the real web: the address guard, URL-list reading, and reason codes."""

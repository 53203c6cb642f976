"""The bottom floor: names every other package shares (usage, error codes, request ids); imports nothing of cocoon."""

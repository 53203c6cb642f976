"""The client role: OpenAI-compatible HTTP API, proxy links, payments, Python SDK."""

"""The OpenAI HTTP API's shapes, written once: request schema, SSE framing, error answers.

A floor above `wire` and below `inference` and the roles: the client API, the worker and the engines all
speak OpenAI through this package.
"""

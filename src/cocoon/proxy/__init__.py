"""Proxy: accepts workers and clients over RA-TLS, routes, meters and bills."""

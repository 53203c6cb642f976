"""`cocoon relay`: an Oblivious HTTP relay (RFC 9458) for VPN providers, paying for its users as a client of
record. It sees users' addresses and the sizes of what they send, never content; it keeps counters, no records."""

"""Oblivious HTTP (RFC 9458) and Binary HTTP (RFC 9292), sans I/O: byte strings in, byte strings out.

`bhttp` encodes and decodes HTTP messages as bytes; `keys` the gateway's key configurations (and the
`application/ohttp-keys` media type); `encap` seals a request to a key configuration and the response back to
the requester; `keyring` is a gateway's keys over time (rotation with overlap, refusal of replayed
encapsulations). The relay, the gateway (proxy side) and the requester (client, SDK) do the I/O around them.
"""

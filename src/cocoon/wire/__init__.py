"""Wire protocol between client, proxy and worker: framed, typed, versioned messages."""

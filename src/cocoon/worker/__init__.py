"""Worker: runs an inference engine inside a TEE and serves requests that its proxies route to it."""

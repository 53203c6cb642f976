"""RA-TLS: self-signed Ed25519 certificates that carry an attestation quote bound to their key."""

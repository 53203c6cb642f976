"""Attestation: quotes, backends (tdx, fake, none), policy, image hash."""

"""Developer tools that are not part of cocoon itself."""

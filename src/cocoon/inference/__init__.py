"""Inference engines: embedded (llama.cpp + bundled model), openai upstream, fake."""

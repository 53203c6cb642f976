"""Mutation testing of the money and trust code (`make mutate`, `python -m tools.mutation --help`)."""

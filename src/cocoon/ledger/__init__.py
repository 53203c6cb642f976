"""Money: prices, the ledger interface and its backends."""

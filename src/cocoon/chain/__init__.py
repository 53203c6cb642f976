"""`cocoon chain`: a devnet serving the toncenter-v2 HTTP API over cocoon's contracts and standard wallets."""

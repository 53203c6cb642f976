"""`cocoon client` that marks every sealed request deterministic in its envelope, whatever its body asks (tests
only): an attacker hoping the proxy's spot checks re-run its sampled requests and hold the honest workers' differing
answers against them.

Run as `python lying_client.py --config FILE`.
"""

from __future__ import annotations

import sys

from cocoon.client import sealing


def always(body: bytes) -> bool:
    return True


sealing.is_deterministic = always  # type: ignore[assignment]

if __name__ == "__main__":
    from cocoon.cli import main

    sys.argv = ["cocoon", "client", *sys.argv[1:]]  # role_process(script=...) passes `--config FILE`
    main()

"""`cocoon worker` that reports more usage than it signed (tests only): every answer's end claims 5 completion
tokens more than the engine counted, after the receipt was signed over the true count. Within the request's
bounds, so only the signature over what crossed the proxy can catch it.

Run as `python greedy_worker.py --config FILE`.
"""

from __future__ import annotations

import sys
from typing import Any

import msgspec

from cocoon.wire import messages
from cocoon.worker import execution


def inflated_end(**fields: Any) -> messages.ResponseEnd:
    usage = fields["usage"]
    fields["usage"] = msgspec.structs.replace(usage, completion_tokens=usage.completion_tokens + 5)
    return messages.ResponseEnd(**fields)


execution.ResponseEnd = inflated_end  # type: ignore[assignment,misc]

if __name__ == "__main__":
    from cocoon.cli import main

    sys.argv = ["cocoon", "worker", *sys.argv[1:]]  # role_process(script=...) passes `--config FILE`
    main()

"""`cocoon worker` that signs, in the receipt of every answer to a request marked deterministic, the content digest of
another answer than the one it served (tests only): hoping spot checks compare the digest it chose (an honest
worker's answer) while its client gets another.

Run as `python digest_lying_worker.py --config FILE`.
"""

from __future__ import annotations

import sys
from typing import Any

from cocoon.ledger.receipts import Receipt
from cocoon.openai.content import content_digest
from cocoon.worker import notary

_honest = notary.Notary.receipt
OTHER = content_digest([b'{"choices": [{"index": 0, "message": {"content": "what an honest model says"}}]}'])


def lying_receipt(self: notary.Notary, *args: Any, **kwargs: Any) -> Receipt:
    if kwargs.get("content_digest"):
        kwargs["content_digest"] = OTHER
    return _honest(self, *args, **kwargs)


notary.Notary.receipt = lying_receipt  # type: ignore[method-assign]

if __name__ == "__main__":
    from cocoon.cli import main

    sys.argv = ["cocoon", "worker", *sys.argv[1:]]  # role_process(script=...) passes `--config FILE`
    main()

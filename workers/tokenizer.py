"""Text in and out of the text runners: loading ``tokenizer.json``, chat prompts, streaming detokenization.

Tokenizing is the ``tokenizers`` library's job; this module only adds what the runners need around it.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from tokenizers import Tokenizer, decoders, pre_tokenizers

from inferno_jobs.errors import InvalidRequest, ModelNotLoaded
from inferno_jobs.model import TEMPLATE_EXTENSION

CHAT_ROLES = ("system", "user", "assistant")


def load_tokenizer(model_path: Path) -> Tokenizer:
    """The ``tokenizer.json`` of a model directory; raises :class:`ModelNotLoaded` when it is missing or bad."""
    path = Path(model_path) / "tokenizer.json"
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception for a missing or malformed file
        raise ModelNotLoaded(f"cannot load {path}: {exc}") from exc


def chat_template_of(model_path: Path, options: dict) -> str | None:
    """The chat template: ``chat_template`` in config.json, else the one in a Hugging Face
    ``tokenizer_config.json`` beside the model, else None (the default format)."""
    if options.get("chat_template"):
        return options["chat_template"]
    hf = Path(model_path) / "tokenizer_config.json"
    if hf.is_file():
        template = json.loads(hf.read_text()).get("chat_template")
        if isinstance(template, str):
            return template
    return None


def check_messages(messages) -> list[dict]:
    """Validate chat ``messages``: a non-empty list of ``{"role", "content"}`` with a known role and text
    content (OpenAI-style lists of ``{"type": "text", "text"}`` parts are joined); raises :class:`InvalidRequest`."""
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("messages must be a non-empty list", details={"field": "messages"})
    out = []
    for i, message in enumerate(messages):
        field = f"messages[{i}]"
        if not isinstance(message, dict) or message.get("role") not in CHAT_ROLES:
            raise InvalidRequest(f"{field}.role must be one of {', '.join(CHAT_ROLES)}", details={"field": field})
        content = message.get("content")
        if isinstance(content, list):
            if not all(isinstance(p, dict) and isinstance(p.get("text"), str) for p in content):
                raise InvalidRequest(f"{field}.content parts must be text", details={"field": field})
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise InvalidRequest(f"{field}.content must be a string", details={"field": field})
        out.append({"role": message["role"], "content": content})
    return out


def render_chat(messages: list[dict], template: str | None, template_kwargs: dict | None = None) -> str:
    """The prompt for ``messages``: the Jinja ``template`` if given, else the default format
    ``<|role|>\\ncontent\\n`` per message followed by ``<|assistant|>\\n``.

    ``template_kwargs`` (a request's ``chat_template_kwargs``) are more variables for the template, as
    ``apply_chat_template(**kwargs)`` takes them. One that the template never reads would be ignored without a
    word, so it is refused (:class:`InvalidRequest`), as is any with the default format, which has no variables.
    """
    template_kwargs = template_kwargs or {}
    if template_kwargs:
        _check_template_kwargs(template, template_kwargs)
    if template is None:
        return "".join(f"<|{m['role']}|>\n{m['content']}\n" for m in messages) + "<|assistant|>\n"
    try:
        return _compile(template).render(messages=messages, add_generation_prompt=True, **template_kwargs)
    except InvalidRequest:
        raise
    except Exception as exc:  # a template error is about this input (e.g. a role order it forbids)
        raise InvalidRequest(f"chat template failed: {exc}", details={"field": "messages"}) from exc


_RESERVED = ("messages", "add_generation_prompt")


def _check_template_kwargs(template: str | None, kwargs: dict) -> None:
    field = {"field": "chat_template_kwargs"}
    if template is None:
        raise InvalidRequest("chat_template_kwargs: this model has no chat template (it uses the default prompt "
                             "format), so no keyword can apply", details=field)
    reserved = sorted(set(kwargs) & set(_RESERVED))
    if reserved:
        raise InvalidRequest(f"chat_template_kwargs: {', '.join(reserved)} cannot be set (the messages are the "
                             "request's and a generation prompt is always added)", details=field)
    unused = sorted(set(kwargs) - _variables(template))
    if unused:
        raise InvalidRequest(f"chat_template_kwargs: the model's chat template does not use {', '.join(unused)}",
                             details={**field, "unused": unused})


@lru_cache(maxsize=16)
def _variables(template: str) -> frozenset[str]:
    """The variables ``template`` reads from its context."""
    from jinja2 import meta

    return frozenset(meta.find_undeclared_variables(_environment().parse(template)))


@lru_cache(maxsize=16)
def _compile(template: str):
    return _environment().from_string(template)


def _environment():
    # Jinja2 arrives with Flask. A sandbox, as transformers uses: templates come with model files; with
    # {% break %} and {% continue %}, which transformers' templates may use.
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise InvalidRequest(f"chat template: {message}", details={"field": "messages"})

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[TEMPLATE_EXTENSION])
    env.globals["raise_exception"] = raise_exception
    return env


class IncrementalDecoder:
    """Turns generated ids into text pieces whose concatenation is the decoded text.

    Byte-level tokens can split a UTF-8 character and BPE decoders may merge spaces across tokens, so a token's
    text is not decode([token]). As Hugging Face TGI does, decode a short window before and after the new ids
    and emit the difference, holding text back while it ends in an incomplete character.
    """

    def __init__(self, tokenizer: Tokenizer, prompt_ids: list[int]):
        self.tokenizer = tokenizer
        # Start the window on the prompt's last ids so the first generated word gets its leading space right.
        self.ids = list(prompt_ids[-4:])
        self.prefix_offset = 0
        self.read_offset = len(self.ids)
        self.text = ""

    def push(self, token_id: int) -> str:
        """Add one generated id; returns the new text it completes (possibly empty)."""
        self.ids.append(token_id)
        prefix = self.tokenizer.decode(self.ids[self.prefix_offset:self.read_offset])
        full = self.tokenizer.decode(self.ids[self.prefix_offset:])
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            piece = full[len(prefix):]
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
            self.text += piece
            return piece
        return ""


class TokenBytes:
    """What a token is for log probabilities: its text and its UTF-8 bytes, as OpenAI shows them.

    A byte-level BPE vocabulary (GPT-2, Llama 3, Qwen, the demo's) spells each byte as one character, so a token
    can hold part of a character: ``decode([id])`` would give "\\ufffd" and the wrong bytes. Its bytes are read
    from its vocabulary entry through the ``tokenizers`` ByteLevel alphabet; joined in order they are exactly the
    UTF-8 of the decoded text. A special token (``<|endoftext|>``), which decoding leaves out of the text, has no
    bytes (``None``, as OpenAI allows). Other tokenizers fall back to ``decode([id])``, which is exact for tokens of
    whole characters.
    """

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        added = tokenizer.get_added_tokens_decoder()
        self.special = {i: t.content for i, t in added.items() if t.special}
        self.added = {i: t.content for i, t in added.items() if not t.special}
        self.byte_level = isinstance(tokenizer.decoder, decoders.ByteLevel)
        self._cache: dict[int, tuple[str, bytes | None]] = {}

    def of(self, token_id: int) -> tuple[str, bytes | None]:
        """``(token, bytes)`` of one id: the token's text, or ``bytes:\\xe2\\x80`` (OpenAI's spelling) when its bytes
        are not whole UTF-8 characters; ``bytes`` None for a special token."""
        found = self._cache.get(token_id)
        if found is None:
            found = self._cache[token_id] = self._read(token_id)
        return found

    def _read(self, token_id: int) -> tuple[str, bytes | None]:
        if token_id in self.special:
            return self.special[token_id], None
        if token_id in self.added:
            raw = self.added[token_id].encode()
        elif self.byte_level:
            piece = self.tokenizer.id_to_token(token_id) or ""  # None: an id past the vocabulary (padded logits)
            alphabet = _byte_level_alphabet()
            raw = bytes(alphabet[c] for c in piece)
        else:
            raw = self.tokenizer.decode([token_id], skip_special_tokens=False).encode()
        try:
            return raw.decode("utf-8"), raw
        except UnicodeDecodeError:
            return "bytes:" + "".join(f"\\x{b:02x}" for b in raw), raw


@lru_cache(maxsize=1)
def _byte_level_alphabet() -> dict[str, int]:
    """The byte each character of a byte-level vocabulary stands for, as the ``tokenizers`` ByteLevel pre-tokenizer
    spells them: it turns each UTF-8 byte of a text into one character."""
    # Every byte value UTF-8 text can hold: all of U+0000..U+07FF (ASCII, the two-byte leads, every continuation
    # byte) and one character for each three- and four-byte lead byte.
    points = [*range(0x800), 0x800, *range(0x1000, 0x10000, 0x1000), *range(0x10000, 0x110000, 0x30000)]
    sample = "".join(map(chr, points))
    ((spelled, _),) = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False).pre_tokenize_str(sample)
    alphabet = dict(zip(spelled, sample.encode()))
    # The 13 bytes no UTF-8 text holds (C0, C1, F5..FF) are printable Latin-1, which the alphabet (GPT-2's) spells
    # as themselves.
    alphabet.update((chr(b), b) for b in set(range(256)) - set(alphabet.values()))
    return alphabet

"""OpenAI function tools: definitions, the call formats models are taught, the prompt section and history rendering."""
from __future__ import annotations

import json
import re
import secrets
import string
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import DependencyMissing, InvalidRequest

if TYPE_CHECKING:
    # types.py imports ToolCall from here, so ChatMessage is only named for the type checker at module level.
    from .types import ChatMessage

# OpenAI's own limits on function names and on the number of tools in one request.
NAME_RE = re.compile(r"[a-zA-Z0-9_-]{1,64}")
MAX_TOOLS = 64
_ID_ALPHABET = string.ascii_letters + string.digits
# The code inside {{ }} / {% %} of a jinja2 template, and string literals within it (to find variable names only).
_JINJA_CODE_RE = re.compile(r"\{[{%](.*?)[%}]\}", re.DOTALL)
_JINJA_STRING_RE = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"", re.DOTALL)
_TOOLS_VAR_RE = re.compile(r"(?<![\w.])tools(?!\w)")


@dataclass(frozen=True)
class Tool:
    """One OpenAI function tool; `parameters` is the JSON schema of its arguments object."""

    name: str
    description: str
    parameters: Mapping[str, Any]


@dataclass(frozen=True)
class ToolCall:
    """A call in the history or in an answer; `arguments` is JSON text, as OpenAI carries it."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class ToolUse:
    """What a request asks for: `choice` is "auto", "required" or "named" (then `name` is the forced tool)."""

    tools: tuple[Tool, ...]
    choice: str
    name: str | None = None
    parallel: bool = True


@dataclass(frozen=True)
class CallFormat:
    """How a model family writes calls and reads results (one row of FORMATS)."""

    name: str
    open: str
    close: str
    response_open: str
    response_close: str
    args_key: str


# Qwen2.5, Qwen3, Hermes 2/3 and SmolLM3 templates all teach the Hermes format; it is also the generic one.
FORMATS: Mapping[str, CallFormat] = types.MappingProxyType({
    "hermes": CallFormat(name="hermes", open="<tool_call>", close="</tool_call>", response_open="<tool_response>",
                         response_close="</tool_response>", args_key="arguments"),
})


def parse_tools(raw: Sequence[Mapping[str, Any]]) -> tuple[Tool, ...]:
    """Validate a request's `tools` (OpenAI shape); InvalidRequest names the offending path."""
    if isinstance(raw, (str, bytes)) or not isinstance(raw, Sequence):
        raise InvalidRequest("tools must be an array of tool objects", param="tools")
    if len(raw) > MAX_TOOLS:
        raise InvalidRequest(f"tools has {len(raw)} entries; at most {MAX_TOOLS} are allowed", param="tools")
    tools: list[Tool] = []
    seen: set[str] = set()
    for i, entry in enumerate(raw):
        where = f"tools[{i}]"
        if not isinstance(entry, Mapping):
            raise InvalidRequest(f"{where} must be an object", param=where)
        if entry.get("type") != "function":
            raise InvalidRequest(f"{where}.type must be 'function', not {entry.get('type')!r}", param=f"{where}.type")
        function = entry.get("function")
        if not isinstance(function, Mapping):
            raise InvalidRequest(f"{where}.function must be an object", param=f"{where}.function")
        name = function.get("name")
        if not isinstance(name, str) or not NAME_RE.fullmatch(name):
            raise InvalidRequest(f"{where}.function.name must be 1-64 characters of a-z, A-Z, 0-9, _ and -, not "
                                 f"{str(name)[:80]!r}", param=f"{where}.function.name")
        if name in seen:
            raise InvalidRequest(f"{where}.function.name: the tool name {name!r} is used twice",
                                 param=f"{where}.function.name")
        seen.add(name)
        description = function.get("description", "")
        if description is None:
            description = ""
        if not isinstance(description, str):
            raise InvalidRequest(f"{where}.function.description must be a string",
                                 param=f"{where}.function.description")
        parameters = _parameters(function.get("parameters"), f"{where}.function.parameters")
        tools.append(Tool(name=name, description=description, parameters=parameters))
    return tuple(tools)


def _parameters(schema: Any, param: str) -> Mapping[str, Any]:
    """A tool's arguments schema, checked by jsonschema and by the grammar bounds; {} / missing mean no arguments."""
    if schema is None or (isinstance(schema, Mapping) and not schema):
        return {"type": "object", "properties": {}}
    if not isinstance(schema, Mapping) or schema.get("type") != "object":
        raise InvalidRequest(f'{param} must be a JSON schema of an object ("type": "object")', param=param)
    try:
        import jsonschema
    except ImportError:
        raise DependencyMissing("jsonschema (needed for tools)", extra="server") from None
    try:
        # A copy through JSON: plain dicts the converter and validator can use, detached from the request.
        copy: dict[str, Any] = json.loads(json.dumps(schema))
        jsonschema.Draft202012Validator.check_schema(copy)
    except (TypeError, ValueError) as exc:
        raise InvalidRequest(f"{param} is not JSON: {exc}", param=param) from None
    except jsonschema.SchemaError as exc:
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in exc.absolute_path)
        raise InvalidRequest(f"{param}{where} is not a valid JSON schema: {exc.message}", param=param) from None
    # Imported here: grammar.py imports types.py, which imports this module.
    from .grammar import check_schema

    try:
        check_schema(copy)
    except InvalidRequest as exc:
        reason = str(exc).removeprefix("json_schema: ")
        raise InvalidRequest(f"{param}: {reason}", param=param) from None
    # A plain dict (not a read-only proxy): it must stay JSON-serialisable for templates and logs.
    return copy


def tool_use(tools: tuple[Tool, ...], tool_choice: str | Mapping[str, Any] | None,
             parallel: bool | None) -> ToolUse | None:
    """What the request asks of the model; None when no tool may be called ("none", or no tools)."""
    choice = "auto" if tool_choice is None else tool_choice
    parallel = True if parallel is None else bool(parallel)
    if isinstance(choice, str):
        if choice not in ("none", "auto", "required"):
            raise InvalidRequest(f"tool_choice must be 'none', 'auto', 'required' or a function, not {choice!r}",
                                 param="tool_choice")
        if choice == "required" and not tools:
            raise InvalidRequest("tool_choice is 'required' but the request has no tools", param="tool_choice")
        if choice == "none" or not tools:
            return None
        return ToolUse(tools=tools, choice=choice, parallel=parallel)
    if not isinstance(choice, Mapping):
        raise InvalidRequest("tool_choice must be a string or an object", param="tool_choice")
    function = choice.get("function")
    name = function.get("name") if isinstance(function, Mapping) else None
    if choice.get("type") != "function" or not isinstance(name, str):
        raise InvalidRequest('tool_choice must look like {"type": "function", "function": {"name": "..."}}',
                             param="tool_choice")
    if name not in {t.name for t in tools}:
        raise InvalidRequest(f"tool_choice names {name[:80]!r}, which is not among the request's tools",
                             param="tool_choice")
    # A named tool is one call of it (as OpenAI does): a small model told to call X otherwise repeats the call.
    return ToolUse(tools=tools, choice="named", name=name, parallel=False)


def native_format(template_source: str | None) -> CallFormat | None:
    """The format a chat template teaches itself when it renders `tools`, else None (the generic prompt is used).

    A static look at the source: the template must use the variable `tools` in its code (not merely say "tools" in
    text, and not only `xml_tools` or the like, which we do not pass) and contain the format's open marker.
    """
    if not template_source:
        return None
    uses_tools = any(_TOOLS_VAR_RE.search(_JINJA_STRING_RE.sub("''", code))
                     for code in _JINJA_CODE_RE.findall(template_source))
    if not uses_tools:
        return None
    return next((fmt for fmt in FORMATS.values() if fmt.open in template_source), None)


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def tool_prompt(use: ToolUse, fmt: CallFormat) -> str:
    """The tool section for the system message of a template without native tools.

    Every token here is evaluated on a 2-core board for every conversation, and the default model is tiny: the
    text is short and shows the one exact syntax the grammar then enforces.
    """
    shown = [t for t in use.tools if use.choice != "named" or t.name == use.name]
    lines = ["# Tools", "", "You can call these tools:"]
    lines += [_dumps({"name": t.name, "description": t.description, "parameters": dict(t.parameters)})
              for t in shown]
    example = use.name if use.choice == "named" and use.name else "NAME"
    lines += ["", "To call a tool, write exactly:", fmt.open,
              f'{{"name": "{example}", "{fmt.args_key}": {{...}}}}', fmt.close]
    if use.parallel:
        lines.append("Write one such block per call.")
    if use.choice == "named":
        lines.append(f"You must call {use.name} now.")
    elif use.choice == "required":
        lines.append("You must call a tool now.")
    else:
        lines.append("If no tool fits, answer in plain text.")
    return "\n".join(lines)


def _arguments_value(arguments: str) -> Any:
    """Call arguments as a JSON value when they parse, else the text itself (carried as a JSON string)."""
    try:
        return json.loads(arguments)
    except ValueError:
        return arguments


def _call_names(messages: Sequence[ChatMessage]) -> dict[str, str]:
    return {call.id: call.name for m in messages for call in m.tool_calls}


def plain_history(messages: Sequence[ChatMessage], fmt: CallFormat) -> list[ChatMessage]:
    """History for a template without tools: calls and results become text in the format the prompt teaches."""
    from .types import ChatMessage

    names = _call_names(messages)
    out: list[ChatMessage] = []
    responses: list[str] = []  # consecutive tool results, merged into one user turn

    def flush() -> None:
        if responses:
            out.append(ChatMessage("user", "\n".join(responses)))
            responses.clear()

    for m in messages:
        if m.role == "tool":
            name = names.get(m.tool_call_id or "") or m.name or "tool"
            content = _result_value(m.content)
            responses.append(f"{fmt.response_open}\n{_dumps({'name': name, 'content': content})}\n"
                             f"{fmt.response_close}")
            continue
        flush()
        if m.role == "assistant" and m.tool_calls:
            blocks = [f"{fmt.open}\n{_dumps({'name': c.name, fmt.args_key: _arguments_value(c.arguments)})}\n"
                      f"{fmt.close}" for c in m.tool_calls]
            out.append(ChatMessage("assistant", "\n".join([m.content, *blocks] if m.content else blocks)))
        else:
            out.append(m)
    flush()
    return out


def _result_value(content: str) -> Any:
    """A tool result as JSON inside the response block: structured results stay structured, the rest is a string."""
    try:
        value = json.loads(content)
    except ValueError:
        return content
    return value if isinstance(value, (dict, list)) else content


def template_messages(messages: Sequence[ChatMessage]) -> list[dict[str, Any]]:
    """The message dicts transformers gives chat templates (call arguments as a dict, as HF templates expect)."""
    names = _call_names(messages)
    out: list[dict[str, Any]] = []
    for m in messages:
        item: dict[str, Any] = {"role": m.role, "content": m.content}
        if m.tool_calls:
            item["tool_calls"] = [{"id": c.id, "type": "function", "function": {
                "name": c.name, "arguments": _template_arguments(c.arguments)}} for c in m.tool_calls]
        if m.role == "tool":
            item["tool_call_id"] = m.tool_call_id
            item["name"] = names.get(m.tool_call_id or "") or m.name
        out.append(item)
    return out


def _template_arguments(arguments: str) -> Any:
    value = _arguments_value(arguments)
    return value if isinstance(value, dict) else arguments


def openai_tools(tools: tuple[Tool, ...]) -> list[dict[str, Any]]:
    """The tools as OpenAI objects, for templates that render them."""
    return [{"type": "function", "function": {"name": t.name, "description": t.description,
                                              "parameters": plain_json(t.parameters)}} for t in tools]


def plain_json(value: Any) -> Any:
    """Plain dicts and lists for jinja2's tojson and jsonschema (json.dumps cannot serialise a MappingProxyType)."""
    if isinstance(value, Mapping):
        return {k: plain_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain_json(v) for v in value]
    return value


def new_call_id() -> str:
    """An OpenAI-style call id: "call_" and 24 random letters and digits."""
    return "call_" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(24))

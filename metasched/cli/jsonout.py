"""The one JSON convention of every metasched command's --json (docs/json.md).

- keys are the proto's field names: snake_case;
- numbers are JSON numbers, 64-bit ids included (protobuf's own JSON mapping writes
  uint64 as strings, for JavaScript's sake; our readers are scripts, jq and Python);
- enum values are short lower-case names: JOB_STATE_QUEUED -> "queued";
- every field is present, with its zero value when unset (a script never needs .get());
- times are seconds since the epoch (floats); 0 means "not yet" / "never".

One function for protobuf messages, so msub, metasched-admin and the Slurm front-ends
cannot drift apart.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

_ENUM_PREFIXES: dict[str, str] = {}


def enum_name(enum: Any, number: int) -> str:
    """The short lower-case name of an enum value: the prefix the enum's values share
    (JOB_STATE_) dropped. An unknown number is shown as the number itself."""
    prefix = _ENUM_PREFIXES.get(enum.full_name)
    if prefix is None:
        names = [v.name for v in enum.values]
        prefix = names[0].rsplit("_", 1)[0] + "_" if names and "_" in names[0] else ""
        if not all(n.startswith(prefix) for n in names):
            prefix = ""
        _ENUM_PREFIXES[enum.full_name] = prefix
    value = enum.values_by_number.get(number)
    if value is None:
        return str(number)
    return str(value.name).removeprefix(prefix).lower()


def _scalar(field: Any, value: Any) -> Any:
    if field.type == FieldDescriptor.TYPE_ENUM:
        return enum_name(field.enum_type, value)
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return message(value)
    if field.type == FieldDescriptor.TYPE_BYTES:
        return base64.b64encode(value).decode("ascii")
    return value


def message(msg: Message) -> dict[str, Any]:
    """A protobuf message as a JSON-ready dict, by the convention above."""
    out: dict[str, Any] = {}
    field: Any
    for field in msg.DESCRIPTOR.fields:
        value = getattr(msg, field.name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            vfield = field.message_type.fields_by_name["value"]
            out[field.name] = {str(k): _scalar(vfield, v) for k, v in value.items()}
        elif field.is_repeated:
            out[field.name] = [_scalar(field, v) for v in value]
        else:
            out[field.name] = _scalar(field, value)
    return out


def dumps(value: Message | Sequence[Message] | dict[str, Any] | list[dict[str, Any]]) -> str:
    """One line of JSON for a message, a list of messages, or plain data already shaped."""
    if isinstance(value, Message):
        return json.dumps(message(value))
    if isinstance(value, list | tuple):
        return json.dumps([message(v) if isinstance(v, Message) else v for v in value])
    return json.dumps(value)

"""HL7 v2 over MLLP: who sends what kind of message to whom, from the MSH segment and nothing else.

Layouts:
- MLLP (the Minimal Lower Layer Protocol of the HL7 v2 Implementation Guide, Appendix C): a message
  is framed as 0x0B <message> 0x1C 0x0D. Detection is by content (0x0B then "MSH"), not by port:
  2575 is the IANA port, but sites use many others (6661 is common).
- HL7 v2 chapter 2 (Control): message construction rules, message delimiters and the MSH segment
  definition. Segments end with a carriage return; MSH-1 is the field separator (the 4th character
  of the segment), MSH-2 the encoding characters (component, repetition, escape, subcomponent, and
  from v2.7 truncation). MSH-3/4 sending application/facility (HD: namespace ID^universal ID^type),
  MSH-5/6 receiving application/facility, MSH-9 message type (code^trigger event^structure), MSH-12
  version ID (VID). Chapter 2's escape sequences in text fields: \\F\\ \\S\\ \\T\\ \\R\\ \\E\\ stand for
  the delimiters.

Privacy: everything after the MSH segment (PID, NK1, OBX, ...) is patient data. The text is cut at the
first segment terminator before it is split, so no later segment is ever looked at. MSH holds
application, facility and message-type names only (MSH-10 control ID and MSH-7 time are not emitted).

Roles: the sender of an ordinary message is the "sender" and its peer the "receiver". An ACK comes back
from the receiver, so for an ACK the sides are flipped: SRC is the receiver, and MSH-3/4 (the ACK's own
sender) are emitted as SRC's hl7.receiving_application/facility, MSH-5/6 as DST's
hl7.sending_application/facility. A name signal therefore always describes the side it is attached to
and the same host gets the same names from both directions of a conversation.
"""

from __future__ import annotations

from medseg_xdp.fingerprint.frame import TCP, Frame, Observation, Side
from medseg_xdp.fingerprint.parsers._text import emit

MLLP_START = 0x0B
MLLP_END = 0x1C
SEGMENT_ENDS = "\r\n\x1c"  # CR per chapter 2; LF seen from sloppy senders; 0x1C ends the MLLP block
ESCAPES = {"F": "field", "S": "component", "T": "subcomponent", "R": "repetition", "E": "escape"}


class _Delimiters:
    """MSH-1 and MSH-2 of one message (HL7 v2 chapter 2, 2.5.4 message delimiters)."""

    def __init__(self, field: str, encoding: str) -> None:
        self.field = field
        self.component = encoding[0]
        self.repetition = encoding[1]
        self.escape = encoding[2] if len(encoding) > 2 else ""
        self.subcomponent = encoding[3] if len(encoding) > 3 else ""


def parse(frame: Frame) -> list[Observation]:
    """Observations from an MSH segment at the start of an MLLP block in a TCP payload; [] otherwise."""
    payload = frame.payload
    if frame.proto != TCP or len(payload) < 9 or payload[0] != MLLP_START or payload[1:4] != b"MSH":
        return []
    fields = _msh_fields(payload[1:])
    if fields is None:
        return []
    delimiters, values = fields

    def field(number: int) -> str:  # MSH-n; values[0] is "MSH", values[1] is MSH-2
        return values[number - 1] if 2 <= number <= len(values) else ""

    message_type = _message_type(field(9), delimiters)
    if not message_type:
        return []  # MSH-9 not captured (or empty): an ACK cannot be told apart, so roles are unknown
    is_ack = message_type.split("^")[0] == "ACK"
    sender, receiver = (Side.DST, Side.SRC) if is_ack else (Side.SRC, Side.DST)
    out: list[Observation] = []
    emit(out, sender, "hl7.role", "sender")
    emit(out, receiver, "hl7.role", "receiver")
    emit(out, Side.SRC, _name_signal(is_ack, "application"), _first_component(field(3), delimiters))
    emit(out, Side.SRC, _name_signal(is_ack, "facility"), _first_component(field(4), delimiters))
    emit(out, Side.DST, _name_signal(not is_ack, "application"), _first_component(field(5), delimiters))
    emit(out, Side.DST, _name_signal(not is_ack, "facility"), _first_component(field(6), delimiters))
    emit(out, Side.SRC, "hl7.message_type", message_type)
    emit(out, Side.SRC, "hl7.version", _first_component(field(12), delimiters))
    return out


def _name_signal(receiver: bool, what: str) -> str:
    """hl7.sending_* or hl7.receiving_*, by the role of the side the name belongs to."""
    return f"hl7.receiving_{what}" if receiver else f"hl7.sending_{what}"


def _is_delimiter(char: str) -> bool:
    """HL7 delimiters are printable ASCII punctuation (chapter 2.5.4 recommends |^~\\&)."""
    return char.isascii() and char.isprintable() and not char.isalnum() and not char.isspace()


def _msh_fields(data: bytes) -> tuple[_Delimiters, list[str]] | None:
    """The complete fields of the MSH segment (data starts at "MSH"); None when it is not one."""
    text = data[:1024].decode("utf-8", "replace")  # a 512-byte sample never holds more
    end = min((i for i in (text.find(c) for c in SEGMENT_ENDS) if i >= 0), default=-1)
    if end >= 0:
        text = text[:end]  # nothing beyond MSH is ever split, let alone emitted
    if len(text) < 5:
        return None
    field_separator = text[3]
    if not _is_delimiter(field_separator):
        return None
    values = text.split(field_separator)
    if end < 0:
        values = values[:-1]  # the segment was cut: its last field may be cut too
    if len(values) < 2 or not _valid_encoding(values[1], field_separator):
        return None
    return _Delimiters(field_separator, values[1]), values


def _valid_encoding(encoding: str, field_separator: str) -> bool:
    """MSH-2: 2 to 5 distinct, non-alphanumeric, printable characters other than the field separator."""
    return (
        2 <= len(encoding) <= 5
        and len(set(encoding)) == len(encoding)
        and field_separator not in encoding
        and all(_is_delimiter(c) for c in encoding)
    )


def _components(value: str, d: _Delimiters) -> list[str]:
    """The components of the first repetition, each cut to its first subcomponent and unescaped."""
    first = value.split(d.repetition)[0]
    parts = first.split(d.component)
    if d.subcomponent:
        parts = [p.split(d.subcomponent)[0] for p in parts]
    return [_unescape(p, d) for p in parts]


def _first_component(value: str, d: _Delimiters) -> str:
    """HD and VID: the first component names the application/facility/version, e.g. "MONITOR_GW"."""
    return _components(value, d)[0] if value else ""


def _message_type(value: str, d: _Delimiters) -> str:
    """MSG: code^trigger event, e.g. "ORU^R01" (the message structure, 3rd component, is dropped)."""
    parts = _components(value, d)[:2] if value else []
    return "^".join(p for p in parts if p)


def _unescape(value: str, d: _Delimiters) -> str:
    """Chapter 2.7: delimiter escapes become the delimiter; other escapes (\\H\\, \\Xhh\\ ...) are dropped."""
    if not d.escape or d.escape not in value:
        return value
    out: list[str] = []
    parts = value.split(d.escape)
    for index, part in enumerate(parts):
        if index % 2 == 0:
            out.append(part)  # outside an escape sequence
        elif index < len(parts) - 1:  # a closed escape sequence
            out.append(getattr(d, ESCAPES[part]) if part in ESCAPES else "")
    return "".join(out)

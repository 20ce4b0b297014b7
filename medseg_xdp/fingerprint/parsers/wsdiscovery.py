"""WS-Discovery (SOAP-over-UDP on 3702): device types and scopes.

IEEE 11073 SDC medical devices (and WSD printers/scanners, Windows hosts) announce themselves with
WS-Discovery Hello/Bye and answer Probe with ProbeMatches; SDC devices list types such as
"dpws:Device mdpws:MedicalDevice" and scopes that encode their component types and location.

Layout: OASIS WS-Discovery 1.1 (and the 2005/04 draft): a SOAP envelope whose header carries
wsa:Action ".../Hello", ".../Probe", ".../ProbeMatches", ".../Bye", ".../Resolve",
".../ResolveMatches" and whose body carries <d:Types> (QNames, space-separated) and <d:Scopes>
(URIs, space-separated). The sample is often cut short, so this is a regex scan over the bytes
present, never an XML parse: no entity expansion, no DTDs, no external references; only the five
predefined XML escapes are undone.

Signals, on SRC:
  wsd.action        "Hello", "Bye", "Probe", "ProbeMatches", "Resolve", "ResolveMatches"
  wsd.types         the Types the sender says it is (Hello, Bye, ProbeMatches, ResolveMatches)
  wsd.probe_types   the Types a Probe searches for: what the sender wants, not what it is
  wsd.scopes        the first MAX_SCOPES scopes, space-separated, trimmed
Patient data: IEEE 11073-20701 defines context scopes ("sdc.ctxt.pat:..." carries a patient
identifier, and workflow/ensemble/means contexts may carry order or case ids); every "sdc.ctxt.*"
scope except the location context ("sdc.ctxt.loc") is dropped before anything is emitted.
"""

from __future__ import annotations

import re

from medseg_xdp.fingerprint.frame import UDP, Frame, Observation, Side
from medseg_xdp.fingerprint.parsers._text import emit

WSD_PORT = 3702
MAX_SCOPES = 5
ANNOUNCING = frozenset({"Hello", "Bye", "ProbeMatches", "ResolveMatches"})
ACTIONS = ANNOUNCING | {"Probe", "Resolve"}
# Linear patterns (no nested quantifiers): the sample is at most a few hundred bytes of hostile input
ACTION_RE = re.compile(rb"<(?:[\w.-]+:)?Action\b[^>]*>\s*([^<\s]+)")
TYPES_RE = re.compile(rb"<(?:[\w.-]+:)?Types\b[^>]*>([^<]*)</")
SCOPES_RE = re.compile(rb"<(?:[\w.-]+:)?Scopes\b[^>]*>([^<]*)</")
ESCAPES = ((b"&lt;", b"<"), (b"&gt;", b">"), (b"&quot;", b'"'), (b"&apos;", b"'"), (b"&amp;", b"&"))
ALLOWED_CONTEXT = "sdc.ctxt.loc"


def parse(frame: Frame) -> list[Observation]:
    data = frame.payload
    if frame.proto != UDP or WSD_PORT not in (frame.sport, frame.dport) or b"<" not in data[:64]:
        return []
    action = _action(data)
    if action is None:
        return []
    out = [Observation(Side.SRC, "wsd.action", action)]
    types = TYPES_RE.search(data)
    if types:
        signal = "wsd.types" if action in ANNOUNCING else "wsd.probe_types"
        emit(out, Side.SRC, signal, b" ".join(_unescape(types.group(1)).split()))
    scopes = SCOPES_RE.search(data)
    if scopes:
        emit(out, Side.SRC, "wsd.scopes", " ".join(safe_scopes(_unescape(scopes.group(1)))[:MAX_SCOPES]))
    return out


def _action(data: bytes) -> str | None:
    match = ACTION_RE.search(data)
    if match is None:
        return None
    name = match.group(1).rstrip(b"/").rsplit(b"/", 1)[-1].decode("ascii", "replace")
    return name if name in ACTIONS else None


def safe_scopes(raw: bytes) -> list[str]:
    """Scopes without the SDC contexts that can identify a patient or a case."""
    kept: list[str] = []
    for scope in raw.split():
        text = scope.decode("utf-8", "replace")
        lowered = text.lower()
        if "sdc.ctxt." in lowered and not lowered.startswith(ALLOWED_CONTEXT):
            continue
        kept.append(text)
    return kept


def _unescape(value: bytes) -> bytes:
    for escaped, plain in ESCAPES:
        value = value.replace(escaped, plain)
    return value

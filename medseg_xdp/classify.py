"""Evidence-based device classification, with rules and weights in data.

medseg_xdp/data/classes.toml names the device classes (with their clinical
criticality) and the rules that vote for them. A device's class is the one
with the highest score; the score of a class is the sum of the weights of
its rules that the device's observations satisfy (each rule once, so a
chatty device does not outvote a quiet one). Every decision carries the
evidence that led to it, so a person can see why.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

DEFAULT_CATALOG = Path(__file__).parent / "data" / "classes.toml"
UNKNOWN = "unknown"
LIFE_CRITICAL = "life_critical"


class CatalogError(ValueError):
    """classes.toml is wrong; the message names the rule."""


@dataclass(frozen=True)
class Evidence:
    signal: str
    value: str
    weight: float
    device_class: str
    why: str

    def as_dict(self) -> dict[str, object]:
        return {"signal": self.signal, "value": self.value, "weight": self.weight, "class": self.device_class, "why": self.why}


@dataclass(frozen=True)
class Condition:
    signals: frozenset[str]
    pattern: re.Pattern[str]


@dataclass(frozen=True)
class ClassRule:
    device_class: str
    weight: float
    why: str
    conditions: tuple[Condition, ...]


@dataclass(frozen=True)
class DeviceClass:
    name: str
    criticality: str
    label: str


@dataclass(frozen=True)
class Catalog:
    classes: dict[str, DeviceClass]
    rules: tuple[ClassRule, ...]
    switch_factor: float
    switch_margin: float
    settled_confidence: float
    confidence_prior: float
    minimum_score: float

    def criticality(self, device_class: str) -> str:
        return self.classes[device_class].criticality if device_class in self.classes else "unknown"


def load_catalog(path: Path = DEFAULT_CATALOG) -> Catalog:
    data = tomllib.loads(path.read_text())
    classes = {
        name: DeviceClass(name, str(body.get("criticality", "unknown")), str(body.get("label", name)))
        for name, body in data.get("classes", {}).items()
    }
    if UNKNOWN not in classes:
        raise CatalogError(f"{path}: the class {UNKNOWN!r} must exist")
    rules = []
    for index, body in enumerate(data.get("rules", [])):
        where = f"{path}: rules[{index}]"
        if body.get("class") not in classes:
            raise CatalogError(f"{where}.class: unknown class {body.get('class')!r}")
        conditions = []
        for number, condition in enumerate(body.get("all", [])):
            try:
                pattern = re.compile(condition["match"], re.IGNORECASE)
            except (KeyError, re.error) as exc:
                raise CatalogError(f"{where}.all[{number}].match: {exc}") from None
            conditions.append(Condition(frozenset(condition["signal"].split("|")), pattern))
        if not conditions:
            raise CatalogError(f"{where}.all: a rule needs at least one condition")
        rules.append(ClassRule(body["class"], float(body["weight"]), str(body.get("why", "")), tuple(conditions)))
    settings = data.get("classifier", {})
    return Catalog(
        classes=classes,
        rules=tuple(rules),
        switch_factor=float(settings.get("switch_factor", 1.5)),
        switch_margin=float(settings.get("switch_margin", 2.0)),
        settled_confidence=float(settings.get("settled_confidence", 0.5)),
        confidence_prior=float(settings.get("confidence_prior", 3.0)),
        minimum_score=float(settings.get("minimum_score", 2.0)),
    )


@dataclass(frozen=True)
class Assessment:
    """What the evidence says, before hysteresis."""

    scores: dict[str, float]
    evidence: tuple[Evidence, ...]

    @property
    def leader(self) -> str:
        if not self.scores:
            return UNKNOWN
        return max(self.scores, key=lambda name: (self.scores[name], name))


@dataclass(frozen=True)
class Decision:
    device_class: str
    confidence: float
    evidence: tuple[Evidence, ...]  # for the chosen class
    changed: bool


Observations = Mapping[str, Mapping[str, int]]  # signal -> value -> times seen


class Classifier:
    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    def assess(self, observations: Observations) -> Assessment:
        scores: dict[str, float] = {}
        evidence: list[Evidence] = []
        for rule in self.catalog.rules:
            matched = [self._satisfy(condition, observations) for condition in rule.conditions]
            if all(m is not None for m in matched):
                scores[rule.device_class] = scores.get(rule.device_class, 0.0) + rule.weight
                evidence.extend(Evidence(s, v, rule.weight, rule.device_class, rule.why) for s, v in matched)  # type: ignore[misc]
        return Assessment(scores, tuple(evidence))

    @staticmethod
    def _satisfy(condition: Condition, observations: Observations) -> tuple[str, str] | None:
        for signal in condition.signals:
            for value in observations.get(signal, ()):
                if condition.pattern.search(value):
                    return signal, value
        return None

    def confidence(self, device_class: str, scores: Mapping[str, float]) -> float:
        if device_class == UNKNOWN:
            return 0.0
        return scores.get(device_class, 0.0) / (sum(scores.values()) + self.catalog.confidence_prior)

    def decide(self, current: str, pinned: bool, observations: Observations, current_confidence: float = 0.0) -> Decision:
        """The class to hold now: a pinned class never moves; a settled one only for a clear lead.

        current_confidence is the confidence the device's class had before this
        evidence: new contrary evidence lowers the current class's share, and
        must not thereby unsettle it.
        """
        assessment = self.assess(observations)
        scores = assessment.scores
        chosen = current
        if not pinned:
            leader = assessment.leader
            lead = scores.get(leader, 0.0)
            if lead < self.catalog.minimum_score:
                leader = UNKNOWN
            settled = current != UNKNOWN and current_confidence >= self.catalog.settled_confidence
            if not settled or leader == current:
                chosen = leader if leader != UNKNOWN or current == UNKNOWN else current
            elif leader != UNKNOWN and lead >= self.catalog.switch_factor * scores.get(current, 0.0) + self.catalog.switch_margin:
                chosen = leader
        confidence = self.confidence(chosen, scores)
        kept = tuple(e for e in assessment.evidence if e.device_class == chosen)
        return Decision(chosen, round(confidence, 3), kept, chosen != current)

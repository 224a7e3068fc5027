"""The farm's vocabulary for the dashboard: species, stages, actuator roles and metrics with their
labels, units and decimals, as ``shared.vocabulary`` defines them (the page spells none itself)."""

from __future__ import annotations

from pydantic import Field

from cloud.api.routing import Call, Route
from cloud.api.schemas import Out
from shared.vocabulary import vocabulary_document


class Term(Out):
    id: str
    label: str


class MetricTerm(Out):
    name: str
    label: str
    unit: str
    min: float = Field(description="lowest physically possible value; lower readings are refused")
    max: float = Field(description="highest physically possible value")
    decimals: int = Field(description="decimals to show")
    banded: bool = Field(description="every grow profile has a target band for it")
    room: bool = Field(description="a property of the room (false: of the sensor node itself)")


class DerivedTerm(Out):
    name: str
    label: str
    unit: str
    decimals: int


class VocabularyOut(Out):
    species: list[Term]
    stages: list[Term]
    actuator_roles: list[Term]
    metrics: list[MetricTerm]
    derived_metrics: list[DerivedTerm] = Field(description="computed from temperature and RH")


async def get_vocabulary(call: Call) -> VocabularyOut:
    """Species, stages, actuator roles and metrics with labels and units"""
    return VocabularyOut.model_validate(vocabulary_document())


ROUTES = [
    Route("GET", "/api/vocabulary", get_vocabulary, "user", response=VocabularyOut, tag="system"),
]

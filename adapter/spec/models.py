"""Pydantic models of the declarative files under ``mappings/``: site files, mapping files and code
tables. ``mappings/schema/*.schema.json`` is generated from these models (``adapter schema``), and a
test keeps it in step. Every model forbids unknown keys, so a typo fails at load time.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ------------------------------------------------------------------------------------------- site


class MRDPolicy(_Strict):
    """How a site reads MRD results against the negativity threshold.

    ``negative_below_percent`` is the threshold in percent of nucleated cells (0.01 %, i.e. 10^-4, in
    every seed paper). ``at_threshold`` says whether a result exactly equal to it is ``negative`` or
    ``positive``: the papers differ (seed 000 counts 0.01 % as negative; laboratory convention
    ``<0,01`` counts it positive), so each site declares it.
    """

    negative_below_percent: float = 0.01
    at_threshold: Literal["negative", "positive"]


class DrugCost(_Strict):
    """What a vial of blinatumomab costs the site, for the drug-cost figures of the outcomes report.

    ``price_per_vial`` in ``currency`` (ISO 4217); ``per_usd`` is the exchange rate the site's
    study used, in ``currency`` per US dollar (seed 002 Methods: 35,000 MXN per vial, 18.4 MXN/USD).
    """

    price_per_vial: float = Field(gt=0)
    currency: str = Field(pattern=r"^[A-Z]{3}$", description="ISO 4217 code")
    per_usd: float = Field(gt=0, description="units of currency per US dollar")
    source: str = Field(description="where the price and rate come from")


class SiteSpec(_Strict):
    """A participating hospital (``mappings/<site>/site.yaml``)."""

    site: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,30}$", description="site code, used in ids and URLs")
    name: str
    country: str = Field(pattern=r"^[A-Z]{2}$", description="ISO 3166-1 alpha-2")
    source: str = Field(description="where the site's conventions come from (paper, data dictionary)")
    mrd: MRDPolicy
    drug_cost: DrugCost | None = None
    identifying_columns: list[str] = Field(
        default_factory=list,
        description="columns of the site's exports that identify a person (names, addresses, phone numbers): a "
                    "mapping that reads one is refused when it is loaded, so their values never reach a resource, "
                    "a row issue or a report. An HL7 v2 field (PID-5) covers all its components (PID-5.1, PID-5[2].1)")


# ---------------------------------------------------------------------------------------- mapping

Step = str | dict[str, Any]


class FieldSpec(_Strict):
    """Where one input of a concept comes from: a ``column`` (or a constant ``value``), then a
    ``pipe`` of named transforms applied in order. A blank cell yields no value (the pipe is not run).
    """

    column: str | None = None
    value: Any = None
    pipe: list[Step] = Field(default_factory=list)
    null_values: list[str] | None = Field(
        default=None, description="cell texts that mean 'no value' in this column (compared trimmed, case-insensitive), "
                                  "in addition to the reader's null_values")

    @model_validator(mode="after")
    def _one_source(self) -> FieldSpec:
        if (self.column is None) == (self.value is None):
            raise ValueError("give exactly one of 'column' or 'value'")
        return self

    @field_validator("pipe")
    @classmethod
    def _steps(cls, pipe: list[Step]) -> list[Step]:
        for i, step in enumerate(pipe):
            if isinstance(step, dict) and (len(step) != 1 or not isinstance(next(iter(step.values())), dict)):
                raise ValueError(f"step {i}: write a step as a name or as {{name: {{arg: value}}}}")
        return pipe


class When(_Strict):
    """Emit the resource block only for rows whose raw ``column`` value passes every given test."""

    column: str
    present: bool | None = None
    matches: str | None = None
    not_matches: str | None = None
    in_: list[str] | None = Field(default=None, alias="in")
    not_in: list[str] | None = None


class ResourceBlock(_Strict):
    """One concept (mapping module) fed from the row: ``fields`` name the concept's inputs."""

    concept: str
    when: When | list[When] | None = Field(default=None, description="one condition, or a list that must all hold")
    fields: dict[str, FieldSpec]

    @property
    def conditions(self) -> list[When]:
        return [] if self.when is None else ([self.when] if isinstance(self.when, When) else list(self.when))


class SkipRule(_Strict):
    """Rows the mapping deliberately does not map (e.g. engraftment events of a long-format export
    when no concept takes them): they are counted per ``reason`` in the ingestion report, never
    dropped silently. A rule applies only to rows that no resource block applies to."""

    when: When | list[When]
    reason: str = Field(min_length=3)

    @property
    def conditions(self) -> list[When]:
        return [self.when] if isinstance(self.when, When) else list(self.when)


class SheetSpec(_Strict):
    """One table of the file: a worksheet by name (XLSX) or the whole file (CSV: leave ``sheet`` out)."""

    sheet: str | None = None
    resources: list[ResourceBlock] = Field(min_length=1)
    skip: list[SkipRule] = Field(default_factory=list)


class ReaderSpec(_Strict):
    """The file's conventions, declared; detection is only a fallback when a key is left out."""

    format: Literal["csv", "xlsx", "hl7v2", "redcap"]
    encoding: str | None = None
    delimiter: str | None = Field(default=None, min_length=1, max_length=1)
    quotechar: str | None = Field(default=None, min_length=1, max_length=1)
    decimal: Literal[".", ","] = "."
    date_format: str | list[str] = "%d/%m/%Y"
    header_row: int = Field(default=1, ge=1)
    null_values: list[str] = Field(
        default_factory=list,
        description="cell texts that mean 'no value' anywhere in the file (e.g. '-', 'NA', 'n/a', '—'), compared "
                    "trimmed and case-insensitive: such a cell is blank, never a parse error")
    data_dictionary: str | None = Field(
        default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="redcap: the project's data dictionary CSV, a file next to the mapping file")

    accept: dict[str, list[str]] | None = Field(
        default=None,
        description="hl7v2 received over MLLP (adapter mllp): the messages meant for this site, as HL7 field path -> "
                    "allowed values, e.g. {'MSH-4.1': ['CDMX-B']} (sending facility); a message whose value at any of "
                    "these paths is another (or none) is for another site and is rejected with AR")

    @model_validator(mode="after")
    def _dictionary_for_redcap(self) -> ReaderSpec:
        if (self.format == "redcap") != (self.data_dictionary is not None):
            raise ValueError("data_dictionary is required for format redcap, and only for it")
        if self.accept is not None:
            from adapter.readers.hl7v2 import FieldPath

            if self.format != "hl7v2":
                raise ValueError("accept is for format hl7v2 only")
            for path, values in self.accept.items():
                FieldPath.parse(path)  # ValueError names the bad path
                if not values:
                    raise ValueError(f"accept: {path} lists no value")
        return self


class MappingSpec(_Strict):
    """A mapping file, ``mappings/<site>/<export>.yaml``: one kind of export a site sends."""

    site: str
    export: str = Field(pattern=r"^[a-z0-9_]+$")
    description: str
    reader: ReaderSpec
    sheets: list[SheetSpec] = Field(min_length=1)


# ------------------------------------------------------------------------------------- code table


class CodeTarget(_Strict):
    """What a source value means: a Coding, plus extra attributes a mapping module may use."""

    system: str | None = None
    code: str | None = None
    display: str | None = None
    extra: dict[str, Any] = Field(default_factory=dict)


class CodeTableSpec(_Strict):
    """A code table data file. ``source`` cites where the codes come from (a code system, a paper, a
    data dictionary). An entry mapped to ``null`` means "known value, deliberately no code"."""

    name: str
    description: str
    source: str
    normalize: Literal["exact", "casefold"] = "casefold"
    system: str | None = Field(default=None, description="default Coding.system for entries without one")
    then: str | None = Field(default=None, description="the code table a value missing here is looked up in next "
                             "(e.g. ctcae_v5: every CTCAE v5.0 term with its MedDRA code)")
    entries: dict[str, CodeTarget | None]

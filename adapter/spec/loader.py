"""Load and check mapping files, site files and code tables (YAML) into compiled, typed objects.

Everything that can be checked without data is checked here, so that a typo fails at load time with
the file and key: unknown keys (pydantic ``extra=forbid``), unknown concepts, fields the concept does
not have or required ones left out, unknown transforms, arguments a transform does not take, and code
tables that do not exist.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

import adapter.mapping  # noqa: F401  (registers concepts)
from adapter.errors import ConfigError, MappingSpecError
from adapter.mapping.base import Concept as ConceptDef
from adapter.mapping.base import SiteContext, get_concept
from adapter.mapping.transforms import CodeTable, Concept, TransformContext, check_arguments, get_transform
from adapter.spec.models import CodeTableSpec, DrugCost, FieldSpec, MappingSpec, SiteSpec, When

# ------------------------------------------------------------------------------------- compiled form


@dataclass(frozen=True)
class CompiledStep:
    name: str
    fn: Any
    args: dict[str, Any]
    column_args: dict[str, str]  # argument name -> column whose raw value is passed


@dataclass(frozen=True)
class CompiledField:
    name: str
    column: str | None
    value: Any
    steps: tuple[CompiledStep, ...]
    #: cell texts that mean "no value" (the reader's and the field's, trimmed and case-folded)
    null_values: frozenset[str] = frozenset()


@dataclass(frozen=True)
class CompiledBlock:
    concept: ConceptDef
    when: tuple[When, ...]
    fields: tuple[CompiledField, ...]
    key: str  # "sheets[i].resources[j]" for messages


@dataclass(frozen=True)
class CompiledSheet:
    sheet: str | None
    blocks: tuple[CompiledBlock, ...]
    columns: frozenset[str]
    skip: tuple[tuple[tuple[When, ...], str], ...] = ()  # (conditions, reason)
    nulls: frozenset[str] = frozenset()  # the reader's null_values (case-folded): absent in conditions too

    @property
    def patient_column(self) -> str | None:
        """The column the site's patient identifier comes from (the first block's ``patient``)."""
        return next((f.column for b in self.blocks for f in b.fields if f.name == "patient" and f.column), None)


@dataclass(frozen=True)
class LoadedMapping:
    """A checked mapping file with its site and code tables, ready for the engine."""

    path: Path
    spec: MappingSpec
    site: SiteSpec
    sheets: tuple[CompiledSheet, ...]
    ctx: TransformContext
    tables: Mapping[str, CodeTable] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.spec.export

    def site_context(self, id_key: str) -> SiteContext:
        """The :class:`SiteContext` builders receive, with the deployment's id key."""
        return SiteContext(
            site=self.site.site, name=self.site.name, country=self.site.country,
            mrd_threshold=self.site.mrd.negative_below_percent,
            mrd_equal_is_negative=self.site.mrd.at_threshold == "negative", id_key=id_key,
        )


# --------------------------------------------------------------------------------------------- YAML


def _read_yaml(path: Path) -> Any:
    try:
        with path.open(encoding="utf-8") as fh:
            # the safe loader, in C when PyYAML was built with libyaml (ctcae_v5's 837 terms: 3x faster)
            return yaml.load(fh, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # noqa: S506
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "<yaml>"
        raise MappingSpecError(str(path), where, f"not valid YAML ({getattr(exc, 'problem', exc)})") from None


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<root>"


def _model(model: type[BaseModel], data: Any, path: Path) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errs = exc.errors()
        first = errs[0]
        more = f" (and {len(errs) - 1} more problem(s))" if len(errs) > 1 else ""
        msg = first["msg"]
        if first["type"] == "extra_forbidden":
            msg = "unknown key (typo?)"
        raise MappingSpecError(str(path), _loc(tuple(first["loc"])), msg + more) from None


# ----------------------------------------------------------------------------------------- loaders


_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")


def _check_name(kind: str, value: str) -> None:
    """Site and mapping names are folder and file names: lower-case letters, digits, ``_`` and ``-``
    (at most 32), so that a name from a request can never leave ``mappings/``."""
    if not _NAME.match(value):
        raise ConfigError(f"{kind} name {value[:40]!r} is not valid (lower-case letters, digits, _ and -, at most 32)")


def load_site(site: str, mappings_dir: Path) -> SiteSpec:
    """Load ``<mappings_dir>/<site>/site.yaml``. Raises ConfigError / MappingSpecError."""
    _check_name("site", site)
    path = mappings_dir / site / "site.yaml"
    if not path.is_file():
        known = sorted(p.parent.name for p in mappings_dir.glob("*/site.yaml"))
        raise ConfigError(f"Unknown site '{site}'; known sites: {', '.join(known) or 'none'}")
    spec: SiteSpec = _model(SiteSpec, _read_yaml(path), path)
    if spec.site != site:
        raise MappingSpecError(str(path), "site", f"is {spec.site!r} but the folder is {site!r}")
    return spec


def load_drug_costs(mappings_dir: Path) -> dict[str, DrugCost]:
    """``{site: DrugCost}`` for every site whose ``site.yaml`` declares a ``drug_cost`` (the vial
    price used by the outcomes report). Raises MappingSpecError for an invalid site file."""
    costs = {}
    for path in sorted(mappings_dir.glob("*/site.yaml")):
        spec = load_site(path.parent.name, mappings_dir)
        if spec.drug_cost is not None:
            costs[spec.site] = spec.drug_cost
    return costs


#: Loaded code tables by (path, modification time, size): a table such as ctcae_v5 (837 terms) is
#: parsed once per process, not once per mapping load; an edited file is read again.
_TABLES: dict[tuple[str, int, int], CodeTable] = {}


def load_code_table(path: Path) -> CodeTable:
    """Load one code table data file (cached while the file is unchanged). Raises MappingSpecError
    naming the file and key."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
    table = _TABLES.get(key)
    if table is None:
        table = _TABLES[key] = _read_code_table(path)
    return table


def _read_code_table(path: Path) -> CodeTable:
    spec: CodeTableSpec = _model(CodeTableSpec, _read_yaml(path), path)
    if spec.name != path.stem:
        raise MappingSpecError(str(path), "name", f"is {spec.name!r} but the file is {path.stem!r}")
    entries: dict[str, Concept | None] = {}
    for key, target in spec.entries.items():
        if target is None:
            entries[key] = None
            continue
        system = target.system or spec.system
        if target.code is not None and system is None:
            raise MappingSpecError(str(path), f"entries.{key}.system", "a code needs a system")
        entries[key] = Concept(system, target.code, target.display, dict(target.extra))
    return CodeTable(spec.name, entries, spec.normalize, spec.source, spec.then)


def load_code_tables(site: str, mappings_dir: Path) -> dict[str, CodeTable]:
    """Shared tables (``mappings/codes/*.yaml``), then the site's (``mappings/<site>/tables/``),
    which override shared ones of the same name."""
    tables: dict[str, CodeTable] = {}
    for folder in (mappings_dir / "codes", mappings_dir / site / "tables"):
        for path in sorted(folder.glob("*.yaml")):
            tables[path.stem] = load_code_table(path)
    for name, table in tables.items():
        if table.then is not None and table.then not in tables:
            raise MappingSpecError(f"{name}.yaml", "then", f"names code table {table.then!r}, which does not exist; "
                                   f"known: {', '.join(sorted(tables))}")
    return tables


def mapping_names(site: str, mappings_dir: Path) -> list[str]:
    """The export names a site has mapping files for."""
    return sorted(p.stem for p in (mappings_dir / site).glob("*.yaml") if p.stem != "site")


def load_mapping(site: str, name: str, mappings_dir: Path) -> LoadedMapping:
    """Load, check and compile ``<mappings_dir>/<site>/<name>.yaml``.

    Raises:
        ConfigError: unknown site or mapping name (the message lists the known ones).
        MappingSpecError: any problem in the file, naming the file and the key path.
    """
    _check_name("site", site)
    _check_name("mapping", name)
    site_spec = load_site(site, mappings_dir)
    path = mappings_dir / site / f"{name}.yaml"
    if name == "site" or not path.is_file():
        raise ConfigError(f"No mapping '{name}' for site '{site}'; known: {', '.join(mapping_names(site, mappings_dir))}")
    spec: MappingSpec = _model(MappingSpec, _read_yaml(path), path)
    if spec.site != site:
        raise MappingSpecError(str(path), "site", f"is {spec.site!r} but the file is under {site!r}")
    if spec.export != name:
        raise MappingSpecError(str(path), "export", f"is {spec.export!r} but the file is {name}.yaml")
    tables = load_code_tables(site, mappings_dir)
    formats = (spec.reader.date_format,) if isinstance(spec.reader.date_format, str) else tuple(spec.reader.date_format)
    ctx = TransformContext(decimal=spec.reader.decimal, date_formats=formats, tables=tables)
    nulls = frozenset(v.strip().casefold() for v in spec.reader.null_values)
    sheets = tuple(_compile_sheet(path, i, s, tables, nulls) for i, s in enumerate(spec.sheets))
    _refuse_identifying(path, spec, site_spec)
    if spec.reader.format in ("csv", "redcap", "hl7v2") and any(s.sheet is not None for s in sheets):
        raise MappingSpecError(str(path), "sheets", f"a {spec.reader.format} file has no sheets; leave 'sheet' out")
    if spec.reader.data_dictionary is not None:  # a file next to the mapping file
        dd = path.parent / spec.reader.data_dictionary
        if not dd.is_file():
            raise MappingSpecError(str(path), "reader.data_dictionary", f"no file {dd.name} next to the mapping file")
        spec = spec.model_copy(update={"reader": spec.reader.model_copy(update={"data_dictionary": str(dd)})})
    return LoadedMapping(path, spec, site_spec, sheets, ctx, tables)


def identifying(column: str, declared: list[str]) -> bool:
    """Whether ``column`` is one of the site's identifying columns: the same header (trimmed,
    case-insensitive), or a component of a declared HL7 v2 field (``PID-5`` covers ``PID-5.1``,
    ``PID-5[2].1``)."""
    col = column.strip().casefold()
    for d in declared:
        d = d.strip().casefold()
        if col == d or (re.match(r"^[a-z][a-z0-9]{2}-\d+$", d) and re.match(rf"^{re.escape(d)}(\[|\.|$)", col)):
            return True
    return False


def _refuse_identifying(path: Path, spec: MappingSpec, site: SiteSpec) -> None:
    """Refuse a mapping that reads a column its site declares identifying (``site.yaml``
    ``identifying_columns``), wherever it reads it: a field, a transform argument, a condition, a
    skip rule. Raises MappingSpecError naming the key."""
    if not site.identifying_columns:
        return
    for i, sheet in enumerate(spec.sheets):
        for j, block in enumerate(sheet.resources):
            key = f"sheets[{i}].resources[{j}]"
            reads = [(f"{key}.fields.{n}", f.column) for n, f in block.fields.items() if f.column]
            reads += [(f"{key}.fields.{n}.pipe[{k}]", a["column"]) for n, f in block.fields.items()
                      for k, step in enumerate(f.pipe) if isinstance(step, dict)
                      for args in step.values() for a in args.values() if isinstance(a, dict) and "column" in a]
            reads += [(f"{key}.when", w.column) for w in block.conditions]
            reads += [(f"sheets[{i}].skip[{k}].when", w.column) for k, r in enumerate(sheet.skip) for w in r.conditions]
            for where, column in reads:
                if identifying(str(column), site.identifying_columns):
                    raise MappingSpecError(str(path), where, f"column {column!r} identifies a person (site.yaml "
                                           "identifying_columns): it may not be mapped, and its values are never read")


def _compile_sheet(path: Path, i: int, sheet: Any, tables: Mapping[str, CodeTable],
                   nulls: frozenset[str] = frozenset()) -> CompiledSheet:
    blocks = []
    columns: set[str] = set()
    for j, block in enumerate(sheet.resources):
        key = f"sheets[{i}].resources[{j}]"
        try:
            concept = get_concept(block.concept)
        except KeyError:
            from adapter.mapping.base import concepts

            raise MappingSpecError(str(path), f"{key}.concept",
                                   f"unknown concept {block.concept!r}; known: {', '.join(sorted(concepts()))}") from None
        model_fields = concept.input_model.model_fields
        for fname in block.fields:
            if fname not in model_fields:
                raise MappingSpecError(str(path), f"{key}.fields.{fname}",
                                       f"concept '{concept.name}' has no input {fname!r}; inputs: {', '.join(model_fields)}")
        for fname, finfo in model_fields.items():
            if finfo.is_required() and fname not in block.fields:
                raise MappingSpecError(str(path), f"{key}.fields", f"required input {fname!r} of concept '{concept.name}' is not mapped")
        fields = []
        for fname, fspec in block.fields.items():
            compiled = _compile_field(path, f"{key}.fields.{fname}", fname, fspec, tables, nulls)
            fields.append(compiled)
            if compiled.column:
                columns.add(compiled.column)
            for step in compiled.steps:
                columns.update(step.column_args.values())
        columns.update(w.column for w in block.conditions)
        blocks.append(CompiledBlock(concept, tuple(block.conditions), tuple(fields), key))
    skip = tuple((tuple(r.conditions), r.reason) for r in sheet.skip)
    columns.update(w.column for r in sheet.skip for w in r.conditions)
    return CompiledSheet(sheet.sheet, tuple(blocks), frozenset(columns), skip, nulls)


def _compile_field(path: Path, key: str, name: str, fspec: FieldSpec, tables: Mapping[str, CodeTable],
                   nulls: frozenset[str] = frozenset()) -> CompiledField:
    steps = []
    for k, step in enumerate(fspec.pipe):
        skey = f"{key}.pipe[{k}]"
        sname, raw_args = (step, {}) if isinstance(step, str) else next(iter(step.items()))
        try:
            fn = get_transform(sname)
        except KeyError:
            from adapter.mapping.transforms import transform_names

            raise MappingSpecError(str(path), skey, f"unknown transform {sname!r}; known: {', '.join(transform_names())}") from None
        args, column_args = {}, {}
        for aname, aval in (raw_args or {}).items():
            if isinstance(aval, dict) and set(aval) == {"column"}:
                column_args[aname] = str(aval["column"])
                args[aname] = None
            else:
                args[aname] = aval
        try:
            check_arguments(sname, args)
        except TypeError as exc:
            raise MappingSpecError(str(path), skey, f"bad arguments for transform {sname!r}: {exc}") from None
        if sname in ("lookup", "lookup_each") and args.get("table") not in tables:
            raise MappingSpecError(str(path), f"{skey}.lookup.table",
                                   f"no code table {args.get('table')!r}; tables: {', '.join(sorted(tables))}")
        for aname in column_args:
            args.pop(aname)
        steps.append(CompiledStep(sname, fn, args, column_args))
    own = frozenset(v.strip().casefold() for v in fspec.null_values or [])
    return CompiledField(name, fspec.column, fspec.value, tuple(steps), nulls | own)

"""FHIR R4 interoperability adapter for multicenter pediatric leukemia outcome studies.

Pipeline, one sub-package per stage (only readers, store, API and CLI do I/O):

    readers/   file -> Row (file, sheet, row number, cells)
    spec/      mapping files and code tables (YAML) -> typed, validated models
    mapping/   Row + MappingSpec -> FHIR R4 JSON dicts (pure functions)
    validation/ R4 JSON Schema + fhir.resources R4B models + our profiles
    store/     SQLAlchemy 2 (SQLite or PostgreSQL), versioned resources
    ingest.py  the service layer joining them; cli.py the command line
"""

__version__ = "0.1.0"

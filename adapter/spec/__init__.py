"""Loading of the declarative files under ``mappings/`` (site files, mapping files, code tables)."""

from adapter.spec.loader import LoadedMapping, load_mapping, load_site, mapping_names

__all__ = ["LoadedMapping", "load_mapping", "load_site", "mapping_names"]

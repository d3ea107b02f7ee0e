"""Validate an MPD against the MPEG-DASH MPD XML schema (ISO/IEC 23009-1), offline.

Why: players are lenient in different ways (dash.js, Shaka and ExoPlayer each accept some
invalid MPDs and trip over others), so "it played in one browser" says little about whether
the MPD we write is right. The schema is the standard's own statement of what an MPD may
contain, in which order, with which required attributes (a Representation without @id or
@bandwidth, an element out of order or misspelt, a bad duration...), so tests check every MPD
the pipeline writes against it.

No package on PyPI or npm ships the schema, so it lives in ``tests/schemas/dash/``: the 5th
edition (with Amendment 1) ``DASH-MPD.xsd`` from MPEG's DASHSchema repository, and the W3C
``xlink.xsd`` and ``xml.xsd`` it needs (their README says where each came from). The DASH schema
imports xlink by its w3.org URL and xlink imports xml.xsd the same way; a resolver maps both URLs
to the local copies and the parsers may not use the network, so validating never goes online.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from lxml import etree

SCHEMA_DIR = Path(__file__).resolve().parent / "schemas" / "dash"

# The remote schemaLocations in the schema files, and the local copy standing in for each.
_LOCAL_COPIES = {
    "http://www.w3.org/XML/2008/06/xlink.xsd": "xlink.xsd",
    "http://www.w3.org/2001/xml.xsd": "xml.xsd",
}


class _LocalSchemas(etree.Resolver):  # type: ignore[misc,unused-ignore]
    """Serves the imports of the schema files from SCHEMA_DIR instead of the network."""

    def resolve(self, system_url: str | None, public_id: str | None, context: Any) -> Any:
        name = _LOCAL_COPIES.get(system_url or "")
        if name is None:
            return None  # libxml2 then loads it itself: a local path works, a URL fails
        return self.resolve_filename(str(SCHEMA_DIR / name), context)


@functools.cache
def _schema() -> Any:
    parser = etree.XMLParser(no_network=True)
    parser.resolvers.add(_LocalSchemas())
    return etree.XMLSchema(etree.parse(str(SCHEMA_DIR / "DASH-MPD.xsd"), parser))


def schema_problems(mpd_text: str) -> list[str]:
    """The schema's complaints about an MPD, one message each ("line N: ..."); [] when valid.

    The text is read as UTF-8 (an XML declaration naming another encoding is not honoured). An
    MPD that is not well-formed XML gives one message saying so rather than raising.
    """
    # A hostile-input parser: no DTD, no entity expansion, no network.
    parser = etree.XMLParser(resolve_entities=False, load_dtd=False, no_network=True)
    try:
        document = etree.fromstring(mpd_text.encode("utf-8"), parser)
    except etree.XMLSyntaxError as exc:
        return [f"not well-formed XML: {exc}"]
    schema = _schema()
    if schema.validate(document):
        return []
    return [f"line {error.line}: {error.message}" for error in schema.error_log]

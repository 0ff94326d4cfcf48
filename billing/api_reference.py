"""docs/api.md, written from the OpenAPI document the service serves.

`make api-docs` (`python -m billing.api_reference`) rewrites the file; a test renders the
served document again and fails when the file differs, so the reference in the repository is
always the API the code answers. Everything here is a pure function of the document.
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any

OUTPUT = Path("docs/api.md")
METHODS = ("get", "put", "post", "delete", "patch")
# Errors every authenticated endpoint can answer; listed once under Conventions.
COMMON_ERRORS = ("400", "401", "403", "404", "409", "422", "429", "503")

INTRO = """\
# The HTTP API

This page is generated from the OpenAPI document the service serves (`GET /openapi.json`;
browsable at `/docs`) by `make api-docs`, and a test fails when the two differ: it is the API
the code answers, never a description of an older one.

## Conventions

- **Keys**: every endpoint but `/healthz`, `/readyz` and the Stripe webhook takes
  `Authorization: Bearer <key>`. Roles: `ingest` (events, admissions, the enforcement feed),
  `team` (reads its own team; any other team is a 404), `finance` (reads all teams; credits,
  month close, exports, Stripe), `admin` (everything, keys and plans). Make keys with
  `metering keys create --role ROLE [--team TEAM]`.
- **JSON** in and out; times are RFC 3339 in UTC (`2026-11-03T10:15:02.125Z`); a time without
  an offset is refused. Money and usage are exact decimal strings (`"151.37"`,
  `"1200.5"`), never floats.
- **Lists** answer `{"data": [...], "next_cursor": "..." | null}`; pass `after=<next_cursor>`
  for the next page.
- **Errors** answer `{"error": {"code": "...", "message": "..."}}` with the matching status.
  Every authenticated endpoint may answer these, so they are listed here once:
"""


def _ref_name(ref: str) -> str:
    return ref.rsplit("/", 1)[-1]


def _anchor(name: str) -> str:
    return name.lower()


def type_of(schema: dict[str, Any]) -> str:
    """A schema as a short type: `string`, `integer`, `[UsagePoint](#usagepoint)[]`, ..."""
    if not schema:
        return "any"
    if "$ref" in schema:
        name = _ref_name(schema["$ref"])
        return f"[{name}](#{_anchor(name)})"
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            parts = [type_of(s) for s in schema[key]]
            nullable = "null" in parts
            parts = [p for p in parts if p != "null"]
            text = " or ".join(dict.fromkeys(parts))
            return f"{text} or null" if nullable else text
    if "enum" in schema:
        return " \\| ".join(f"`{v}`" for v in schema["enum"])
    if "const" in schema:
        return f"`{schema['const']}`"
    kind = schema.get("type", "any")
    if kind == "array":
        return f"{type_of(schema.get('items', {}))}[]"
    if kind == "object" and "additionalProperties" in schema:
        extra = schema["additionalProperties"]
        return f"object of {type_of(extra)}" if isinstance(extra, dict) and extra else "object"
    fmt = schema.get("format")
    return f"{kind} ({fmt})" if fmt else str(kind)


def what_it_does(op: dict[str, Any]) -> str:
    """The description's first sentence; FastAPI's made-up summary ("Get Usage") only when
    there is no description."""
    description = " ".join(op.get("description", "").split())
    if description:
        first = re.split(r"(?<!\be\.g)(?<!\bi\.e)\.\s", description, maxsplit=1)[0]
        return first if first.endswith(".") else first + "."
    return str(op.get("summary", ""))


def _cell(text: Any) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _limits(schema: dict[str, Any]) -> str:
    notes = []
    for key, label in (("minimum", "≥"), ("maximum", "≤"), ("exclusiveMinimum", ">"),
                       ("exclusiveMaximum", "<"), ("minLength", "length ≥"),
                       ("maxLength", "length ≤"), ("maxItems", "items ≤"),
                       ("pattern", "pattern")):
        if key in schema:
            value = f"`{schema[key]}`" if key == "pattern" else schema[key]
            notes.append(f"{label} {value}")
    if "default" in schema and schema["default"] is not None:
        notes.append(f"default `{json.dumps(schema['default'])}`")
    return "; ".join(notes)


def _parameters(op: dict[str, Any]) -> list[str]:
    params = op.get("parameters", [])
    if not params:
        return []
    lines = ["", "| parameter | in | type | required | notes |", "|---|---|---|---|---|"]
    for p in params:
        schema = p.get("schema", {})
        notes = " ".join(x for x in (p.get("description", ""), _limits(schema)) if x)
        lines.append(f"| `{p['name']}` | {p['in']} | {_cell(type_of(schema))} | "
                     f"{'yes' if p.get('required') else 'no'} | {_cell(notes)} |")
    return lines


def _body(op: dict[str, Any]) -> list[str]:
    body = op.get("requestBody")
    if not body:
        return []
    lines = [""]
    for media, content in body.get("content", {}).items():
        schema = content.get("schema", {})
        lines.append(f"Body (`{media}`): {type_of(schema)}"
                     + (f"; {_limits(schema)}" if _limits(schema) else "") + ".")
    example = next((c["schema"]["example"] for c in body.get("content", {}).values()
                    if "example" in c.get("schema", {})), None)
    if example is not None:
        lines += ["", "```json", json.dumps(example, indent=1), "```"]
    return lines


def common_errors(document: dict[str, Any]) -> dict[str, str]:
    """Each common error status with the description most endpoints give it (an endpoint
    that answers it differently lists its own)."""
    seen: dict[str, Counter[str]] = {}
    for ops in document.get("paths", {}).values():
        for method in METHODS:
            op = ops.get(method)
            if op and op.get("security"):
                for status in COMMON_ERRORS:
                    response = op.get("responses", {}).get(status)
                    if response:
                        seen.setdefault(status, Counter())[response.get("description", "")] += 1
    return {status: counts.most_common(1)[0][0] for status, counts in seen.items()}


def _responses(op: dict[str, Any], common: dict[str, str]) -> list[str]:
    lines = ["", "| status | answer |", "|---|---|"]
    for status, response in sorted(op.get("responses", {}).items()):
        if (status in COMMON_ERRORS and op.get("security")
                and response.get("description", "") == common.get(status)):
            continue
        content = response.get("content", {})
        shape = ", ".join(f"{type_of(c.get('schema', {}))}"
                          + ("" if media == "application/json" else f" (`{media}`)")
                          for media, c in content.items())
        text = response.get("description", "")
        if text == "Successful Response":
            text = ""
        lines.append(f"| {status} | {_cell(' — '.join(x for x in (shape, text) if x))} |")
    return lines


def _operation(path: str, method: str, op: dict[str, Any],
               common: dict[str, str]) -> list[str]:
    lines = ["", f"### {method.upper()} `{path}`"]
    description = op.get("description", "").strip()
    lines += ["", description or str(op.get("summary", ""))]
    if not op.get("security"):
        lines += ["", "No API key."]
    lines += _parameters(op) + _body(op) + _responses(op, common)
    return lines


def _schema(name: str, schema: dict[str, Any]) -> list[str]:
    lines = ["", f"### {name}"]
    if schema.get("description"):
        lines += ["", " ".join(schema["description"].split())]
    props = schema.get("properties")
    if not props:
        lines += ["", f"{type_of(schema)}."]
        return lines
    required = set(schema.get("required", []))
    lines += ["", "| field | type | required | notes |", "|---|---|---|---|"]
    for field, spec in props.items():
        notes = " ".join(x for x in (spec.get("description", ""), _limits(spec)) if x)
        lines.append(f"| `{field}` | {_cell(type_of(spec))} | "
                     f"{'yes' if field in required else 'no'} | {_cell(notes)} |")
    return lines


def render(document: dict[str, Any]) -> str:
    """The Markdown reference of an OpenAPI document."""
    lines = [INTRO.rstrip("\n"), ""]
    common = common_errors(document)
    lines += [f"  - `{status}`: {_cell(common[status])}" for status in sorted(common)]
    lines += ["", "## Endpoints", "", "| method | path | what it does |", "|---|---|---|"]
    groups: dict[str, list[tuple[str, str, dict[str, Any]]]] = {}
    for path, ops in document.get("paths", {}).items():
        for method in METHODS:
            op = ops.get(method)
            if op is None:
                continue
            tag = (op.get("tags") or ["other"])[0]
            groups.setdefault(tag, []).append((path, method, op))
            lines.append(f"| {method.upper()} | `{path}` | {_cell(what_it_does(op))} |")
    for tag, operations in groups.items():
        lines += ["", f"## {tag.capitalize()}"]
        for path, method, op in operations:
            lines += _operation(path, method, op, common)
    schemas = document.get("components", {}).get("schemas", {})
    if schemas:
        lines += ["", "## Schemas"]
        for name in sorted(schemas):
            lines += _schema(name, schemas[name])
    text = "\n".join(lines)
    while "\n\n\n" in text:
        text = text.replace("\n\n\n", "\n\n")
    return text.rstrip() + "\n"


def served_document() -> dict[str, Any]:
    """The OpenAPI document of the app as `metering serve` builds it. Building the app opens
    no connection, so no database is needed (the URL is never dialled)."""
    from billing.app import create_app
    from metering.config import Settings

    settings = Settings(bootstrap_admin_key=None, database_url=None)
    app = create_app(settings, database_url="postgresql://reference@127.0.0.1:1/none",
                     migrate_on_start=False)
    return app.openapi()


def main() -> int:
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else OUTPUT
    target.write_text(render(served_document()))
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""docs/config.md, rendered from the config models so that the reference cannot drift from what is validated.

The page is the JSON schema of `RecForgeConfig` (with `$ref`s resolved and the discriminated unions `source` and
`online_store` split into their variants) plus one schema per CTR model config (`train.model_params.<model>`):
every key gets a table row with its dotted path, type, default, constraints (bounds, choices) and meaning (its
`Field(description=...)`); every model's class docstring is the prose of its section. What belongs to no model
(paths, overrides, error messages) lives in `templates/config.md.j2`, which places the generated sections.

    python -m recforge.configdoc            # write docs/config.md (what `make docs` runs)
    python -m recforge.configdoc --check    # exit 1 when docs/config.md differs from what the models say
"""

from __future__ import annotations

import argparse
import inspect
import json
import re
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema
from pydantic_core import core_schema

from serving.reports.render import render as render_template

REPO_ROOT = Path(__file__).resolve().parents[1]
DOC_PATH = REPO_ROOT / "docs" / "config.md"
TEMPLATE_NAME = "config.md.j2"
REGENERATE = "make docs"  # what a stale page's message tells the reader to run
MODEL_PARAMS_PATH = "train.model_params"
MODEL_PARAMS_ANCHOR = "model-params"

JSON = Mapping[str, Any]


class FactoryDefaultsSchema(GenerateJsonSchema):
    """JSON schema whose defaults include those of `default_factory` fields.

    pydantic leaves factory defaults out of the schema, but most list, mapping and nested-section defaults are
    factories (`Field(default_factory=lambda: [256, 128])`); a reference that showed them as "no default" would
    be wrong. Factories that take the validated data are left out as pydantic does (there is no data here).
    """

    def get_default_value(self, schema: core_schema.WithDefaultSchema) -> Any:
        factory = schema.get("default_factory")
        if factory is not None and not schema.get("default_factory_takes_data"):
            value = factory()  # type: ignore[call-arg]
            return value.model_dump(mode="json") if isinstance(value, BaseModel) else value
        return super().get_default_value(schema)


def model_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The validation-mode JSON schema of `model`, factory defaults included."""
    return model.model_json_schema(schema_generator=FactoryDefaultsSchema)


# ------------------------------------------------------------------------------------------------ rendering


def yaml_value(value: Any) -> str:
    """`value` as a YAML flow value, as one would write it in a config (quoted only where YAML would misread it).

    Strings YAML would read as something else (`"2026-01-01"` is a date, `"32"` an int, `"|"` a block scalar)
    keep their quotes, so a default copied from the page means the same in a config file.
    """
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        try:
            plain = value != "" and value.strip() == value and yaml.safe_load(value) == value
        except yaml.YAMLError:
            plain = False
        return value if plain and not any(c in value for c in ",[]{}#") else json.dumps(value)
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{yaml_value(k)}: {yaml_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, Sequence):
        return "[" + ", ".join(yaml_value(v) for v in value) + "]"
    return json.dumps(value)


def _cell(text: str) -> str:
    """Text fit for one markdown table cell: one line, pipes escaped (GFM splits cells on them, even in code)."""
    return " ".join(text.split()).replace("|", "\\|")


def _code(text: str) -> str:
    """Inline code: keys, values and choices are written as one would type them in a config."""
    return f"`{text}`"


def _bound(node: JSON, exclusive: str, inclusive: str, strict_op: str) -> tuple[str, Any] | None:
    """A JSON-schema bound of `node` as (operator, value): `(">", 0)` for `gt=0`, `(">=", 0)` for `ge=0`."""
    if exclusive in node:
        return strict_op, node[exclusive]
    if inclusive in node:
        return strict_op + "=", node[inclusive]
    return None


def first_paragraph(text: str) -> str:
    """The first paragraph of a description: what a summary cell shows of a section's longer prose."""
    return text.strip().split("\n\n", 1)[0].rstrip(".")


def as_prose(text: str) -> str:
    """A description (written as a table cell: lower-case start) as the opening of a section's prose."""
    text = text.strip()
    return text[:1].upper() + text[1:]


@dataclass(frozen=True)
class Row:
    """One key of a table."""

    key: str
    type: str
    default: str
    constraints: str
    meaning: str

    def markdown(self) -> str:
        cells = (_code(self.key), self.type, self.default, self.constraints, self.meaning)
        return "| " + " | ".join(_cell(c) for c in cells) + " |"


TABLE_HEAD = "| key | type | default | constraints | meaning |\n|---|---|---|---|---|"


@dataclass
class Table:
    """A model's part of the page: heading, prose (the class docstring), its keys, then its nested models."""

    anchor: str
    title: str
    level: int
    prose: str
    rows: list[Row]
    children: list[Table] = field(default_factory=list)
    empty_note: str = ""

    def markdown(self) -> str:
        parts = [f'<a id="{self.anchor}"></a>\n{"#" * self.level} {self.title}']
        if self.prose:
            parts.append(self.prose)
        if self.rows:
            parts.append(TABLE_HEAD + "\n" + "\n".join(r.markdown() for r in self.rows))
        elif self.empty_note:
            parts.append(self.empty_note)
        parts.extend(c.markdown() for c in self.children)
        return "\n\n".join(parts)

    def walk_rows(self) -> Iterator[Row]:
        yield from self.rows
        for c in self.children:
            yield from c.walk_rows()


class SchemaWalker:
    """Turns a JSON schema (with its `$defs`) into tables: one per model, nested models below their parent."""

    def __init__(self, schema: JSON) -> None:
        self.defs: JSON = schema.get("$defs", {})
        self.anchors: set[str] = set()

    # --- schema shapes

    def resolve(self, node: JSON, *, siblings: bool = True) -> JSON:
        """Follow `$ref`. With `siblings`, keys beside the reference (the field's `default`, `description`)
        override the target's; without, the target is returned as defined (a model keeps its docstring)."""
        while "$ref" in node:
            target = self.defs[node["$ref"].rsplit("/", 1)[-1]]
            node = {**target, **{k: v for k, v in node.items() if k != "$ref"}} if siblings else target
        return node

    def is_model(self, node: JSON) -> bool:
        node = self.resolve(node)
        return node.get("type") == "object" and "properties" in node

    def nested(self, node: JSON) -> tuple[str, list[JSON]] | None:
        """How a property holds models, if it does: (suffix of the item path, the model or union variants).

        `.` + one model (`train.optim`), `[]` for a list of models (`features.categorical[]`), `.<name>` for a
        mapping of name -> model (`entities.<name>`); an optional model (`T | None`) counts as the model.
        """
        definition = self.resolve(node, siblings=False)
        node = self.resolve(node)
        if "oneOf" in node and "discriminator" in node:
            return "", [self.resolve(v, siblings=False) for v in node["oneOf"]]
        if self.is_model(node):
            return "", [definition]
        if "anyOf" in node:
            models = [self.resolve(b, siblings=False) for b in node["anyOf"] if self.is_model(b)]
            if models and all(self.is_model(b) or self.resolve(b).get("type") == "null" for b in node["anyOf"]):
                return "", models
        if node.get("type") == "array" and self.nested(node.get("items", {})):
            inner = self.nested(node["items"])
            assert inner is not None
            return "[]" + inner[0], inner[1]
        extra = node.get("additionalProperties")
        if node.get("type") == "object" and isinstance(extra, Mapping) and self.nested(extra):
            inner = self.nested(extra)
            assert inner is not None
            return ".<name>" + inner[0], inner[1]
        return None

    # --- cells

    def type_of(self, node: JSON, *, in_union: bool = False) -> str:
        """The key's type as a config author reads it: int, float, str, bool, null, list[...], map[str, ...]."""
        node = self.resolve(node)
        if "oneOf" in node or self.is_model(node):
            return "mapping"
        if "anyOf" in node:
            names = [self.type_of(b, in_union=True) for b in node["anyOf"]]
            return " | ".join(dict.fromkeys(names))
        if "const" in node or "enum" in node:
            choices = [node["const"]] if "const" in node else list(node["enum"])
            if in_union:  # `int | "auto"`: the literal is the informative part of such a union
                return " | ".join(json.dumps(c) for c in choices)
            return self._scalar(node.get("type"), choices)
        kind = node.get("type")
        if kind == "array":
            return f"list[{self.type_of(node.get('items', {}))}]"
        if kind == "object":
            extra = node.get("additionalProperties")
            return f"map[str, {self.type_of(extra)}]" if isinstance(extra, Mapping) else "mapping"
        return self._scalar(kind, [])

    @staticmethod
    def _scalar(kind: Any, choices: list[Any]) -> str:
        names = {"integer": "int", "number": "float", "string": "str", "boolean": "bool", "null": "null"}
        if kind in names:
            return names[kind]
        if choices and all(isinstance(c, str) for c in choices):
            return "str"
        return "any" if kind is None else str(kind)

    def constraints_of(self, node: JSON) -> list[str]:
        """Bounds, allowed values and lengths, each as a short phrase."""
        node = self.resolve(node)
        out: list[str] = []
        if "anyOf" in node:
            for b in node["anyOf"]:
                rb = self.resolve(b)
                if "const" not in rb and "enum" not in rb:  # literals are spelled out in the type already
                    out.extend(self.constraints_of(b))
            return list(dict.fromkeys(out))
        if "const" in node:
            out.append(f"must be {_code(str(node['const']))}")
        elif "enum" in node:
            out.append("one of " + ", ".join(_code(str(c)) for c in node["enum"]))
        lower = _bound(node, "exclusiveMinimum", "minimum", ">")
        upper = _bound(node, "exclusiveMaximum", "maximum", "<")
        if lower is not None and upper is not None:  # an interval reads best as one: 0 <= x < 1
            flipped = lower[0].replace(">", "<")
            out.append(f"{yaml_value(lower[1])} {flipped} x {upper[0]} {yaml_value(upper[1])}")
        else:
            out.extend(f"{b[0]} {yaml_value(b[1])}" for b in (lower, upper) if b is not None)
        if "minItems" in node:
            out.append(f"at least {node['minItems']} item{'s' if node['minItems'] != 1 else ''}")
        if "maxItems" in node:
            out.append(f"at most {node['maxItems']} items")
        if "minLength" in node:
            out.append(f"at least {node['minLength']} characters")
        if node.get("type") == "array" and isinstance(node.get("items"), Mapping):
            out.extend(f"each item {c}" for c in self.constraints_of(node["items"]))
        extra = node.get("additionalProperties")
        if node.get("type") == "object" and isinstance(extra, Mapping):
            out.extend(f"each value {c}" for c in self.constraints_of(extra))
        return out

    def default_of(self, name: str, prop: JSON, required: Sequence[str]) -> str:
        """The default as one would write it in YAML, `required` where there is none to fall back on."""
        if name in required:
            return "required"
        node = self.resolve(prop)
        if "default" not in node:
            return ""
        if self.is_model(node):  # a nested section: its keys' defaults are in its own table
            return "its keys' defaults"
        return _code(yaml_value(node["default"]))

    # --- tables

    def anchor(self, path: str) -> str:
        """An id for `path` that is unique on the page (a second use gets a numeric suffix)."""
        base = re.sub(r"[^A-Za-z0-9_.-]+", "-", path).strip("-")
        anchor, n = base, 1
        while anchor in self.anchors:
            n += 1
            anchor = f"{base}-{n}"
        self.anchors.add(anchor)
        return anchor

    def rows_of(self, model: JSON, path: str, *, skip: Callable[[str, JSON], bool] | None = None,
                level: int = 3, tag: str | None = None) -> tuple[list[Row], list[Table]]:
        """The rows of one model's keys under dotted `path`, and the tables of the models nested in it.

        `tag` is a union variant's discriminator key: required in the config even where the variant's model
        gives it a default, since pydantic picks the variant by it before any default applies.
        """
        rows: list[Row] = []
        children: list[Table] = []
        required = [*model.get("required", []), *([tag] if tag else [])]
        for name, prop in model.get("properties", {}).items():
            if skip is not None and skip(name, prop):
                continue
            key = f"{path}.{name}" if path else name
            meaning = str(prop.get("description", ""))  # a field's own; a nested model's docstring is its prose
            type_ = self.type_of(prop)
            sub = self.nested(prop)
            if sub is not None:
                child = self.section(key, prop, level=level)
                type_ = f"{type_} ([{_code(key + sub[0])}](#{child.anchor}))"
                children.append(child)
                meaning = first_paragraph(meaning)
            elif key == MODEL_PARAMS_PATH:  # a free mapping here; its keys are the model configs' own section
                type_ = f"{type_} ([{_code(key + '.<model>')}](#{MODEL_PARAMS_ANCHOR}))"
            rows.append(Row(key, type_, self.default_of(name, prop, required),
                            "; ".join(self.constraints_of(prop)), meaning))
        return rows, children

    def section(self, path: str, prop: JSON, *, level: int) -> Table:
        """The table(s) of a key that holds models: one model, a list or mapping of them, or a tagged union.

        A model's prose is its docstring. A union has no class of its own: each variant follows with its
        docstring and table. A key whose description has several paragraphs opens its section with them.
        """
        sub = self.nested(prop)
        assert sub is not None, path
        suffix, models = sub
        item_path = path + suffix
        node = self.resolve(prop)
        description = str(prop.get("description", ""))
        # the parent's cell shows a description's first paragraph; one with more says something of the whole key
        # (a union, a mapping) that no class docstring can, so the section opens with it
        intro = as_prose(description) if "\n\n" in description.strip() else ""
        if "oneOf" in node:
            tag = node["discriminator"]["propertyName"]
            table = Table(self.anchor(path), _code(path), level, intro, [])
            for variant in models:
                tags = self.variant_tags(variant, tag)
                title = f"{_code(path)} with {_code(f'{tag}: ' + ' | '.join(tags))}"
                v_table = Table(self.anchor(f"{path}.{tags[0]}"), title, level + 1,
                                inspect.cleandoc(variant.get("description", "")), [])
                v_table.rows, v_table.children = self.rows_of(variant, item_path, level=level + 2, tag=tag)
                table.children.append(v_table)
            return table
        (model,) = models
        prose = "\n\n".join(p for p in (intro, inspect.cleandoc(model.get("description", ""))) if p)
        table = Table(self.anchor(path), _code(item_path), level, prose, [])
        table.rows, table.children = self.rows_of(model, item_path, level=level + 1)
        return table

    @staticmethod
    def variant_tags(variant: JSON, tag: str) -> list[str]:
        spec = variant["properties"][tag]
        return [str(spec["const"])] if "const" in spec else [str(v) for v in spec.get("enum", [])]


# ---------------------------------------------------------------------------------------------- the page


def ctr_model_configs() -> dict[str, type[BaseModel]]:
    """Model name -> its config class, in the registry's order (what `train.model_params.<model>` accepts)."""
    from training.ranking.models import MODELS

    return {name: cls.config_class for name, cls in MODELS.items()}


def model_params_table() -> Table:
    """`train.model_params.<model>`: the keys every model shares, then each model's own keys."""
    from training.ranking.models.base import ModelConfig

    path = f"{MODEL_PARAMS_PATH}.<model>"
    base = model_schema(ModelConfig)
    walker = SchemaWalker(base)
    prose = inspect.cleandoc(base.get("description", ""))
    table = Table(MODEL_PARAMS_ANCHOR, f"Model parameters ({_code(path)})", 2, prose, [])
    table.rows, table.children = walker.rows_of(base, path)
    for name, cls in ctr_model_configs().items():
        schema = model_schema(cls)
        walker.defs = schema.get("$defs", {})
        shared = base.get("properties", {})

        def inherited(key: str, prop: JSON, shared: JSON = shared) -> bool:
            return shared.get(key) == prop

        own = Table(walker.anchor(f"{MODEL_PARAMS_PATH}.{name}"), f"{_code(name)} ({cls.__name__})", 3,
                    inspect.cleandoc(schema.get("description", "")), [],
                    empty_note="No keys beyond the shared ones above.")
        own.rows, own.children = walker.rows_of(schema, f"{MODEL_PARAMS_PATH}.{name}", skip=inherited, level=4)
        table.children.append(own)
    return table


@dataclass
class Page:
    """Everything the template places: the top-level table and one rendered section per top-level key."""

    top_rows: list[Row]
    sections: dict[str, Table]
    model_params: Table

    def rows(self) -> Iterator[Row]:
        """Every key on the page, top level first: what the description check walks."""
        yield from self.top_rows
        for t in self.sections.values():
            yield from t.walk_rows()
        yield from self.model_params.walk_rows()


def build_page() -> Page:
    """Walk `RecForgeConfig`'s schema: a row per top-level key, a section per key that holds models."""
    from recforge.config import RecForgeConfig

    schema = model_schema(RecForgeConfig)
    walker = SchemaWalker(schema)
    walker.anchors.update({"paths", "overrides", "error-messages", MODEL_PARAMS_ANCHOR})
    top_rows: list[Row] = []
    sections: dict[str, Table] = {}
    required = schema.get("required", [])
    for name, prop in schema["properties"].items():
        meaning = str(prop.get("description", ""))
        type_ = walker.type_of(prop)
        if walker.nested(prop) is not None:
            # a section: its id is the bare key (`#train`), the anchor README and docs/cli.md link to
            sections[name] = walker.section(name, prop, level=2)
            type_ = f"{type_} ([{_code(name)}](#{sections[name].anchor}))"
            meaning = first_paragraph(meaning)
        top_rows.append(Row(name, type_, walker.default_of(name, prop, required),
                            "; ".join(walker.constraints_of(prop)), meaning))
    return Page(top_rows, sections, model_params_table())


def render() -> str:
    """The text of docs/config.md. Every top-level section must be placed by the template exactly once."""
    page = build_page()
    placed: list[str] = []

    def section(name: str) -> str:
        if name not in page.sections:
            raise KeyError(f"{TEMPLATE_NAME}: section('{name}') is not a top-level config section "
                           f"(sections: {', '.join(page.sections)})")
        placed.append(name)
        return page.sections[name].markdown()

    text = render_template(
        TEMPLATE_NAME,
        {
            "top_level": TABLE_HEAD + "\n" + "\n".join(r.markdown() for r in page.top_rows),
            "section": section,
            "model_params": page.model_params.markdown(),
            "regenerate": REGENERATE,
        },
        package="recforge",
    )
    missing = [n for n in page.sections if n not in placed]
    twice = sorted({n for n in placed if placed.count(n) > 1})
    if missing or twice:
        raise ValueError(f"{TEMPLATE_NAME}: every top-level section must be placed once with "
                         f"{{{{ section('NAME') }}}}; missing: {missing or 'none'}, repeated: {twice or 'none'}")
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"


def undescribed_keys() -> list[str]:
    """Dotted keys of RecForgeConfig and of the CTR model configs whose field has no description."""
    return [r.key for r in build_page().rows() if not r.meaning.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    """Write the page, or with `--check` compare it (exit 1 naming the command that fixes a stale page)."""
    parser = argparse.ArgumentParser(prog="python -m recforge.configdoc", description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="do not write; exit 1 when the file differs from what the models generate")
    parser.add_argument("--output", type=Path, default=DOC_PATH, help="the page (default: docs/config.md)")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.output.read_text() if args.output.is_file() else ""
        if current != text:
            print(f"{args.output.name} is out of date with the config models (their docstrings and Field "
                  f"descriptions, or {TEMPLATE_NAME}); run `{REGENERATE}` (python -m recforge.configdoc) "
                  f"and commit the result", file=sys.stderr)
            return 1
        print(f"{args.output.name} is up to date")
        return 0
    args.output.write_text(text)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

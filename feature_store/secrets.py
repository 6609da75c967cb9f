"""Secrets in the config: which fields hold them, and how they are kept out of every output.

A config field is secret by its type: `SecretText` (the whole value: `serving.admin_token`) or `SecretUrl` (the
credentials in a URL, `user:password@`: `online_store.url`, `train.tracking.uri`, `retrieval.tracking.uri`). Both
are plain strings to the code that uses them, and serialise redacted in JSON mode, which is what every output of a
config goes through: `model_dump(mode="json")` feeds MLflow params, the `resolved_config` files and artifacts,
`recforge config`, checkpoints' hyperparameters and bundles. A later config section adds a secret by using one of
the two types; `secret_fields(model)` lists them all (docs and tests read that list).

What is not a config dump is scrubbed by value: `register` (called when a config is loaded) remembers this
process's secret values, and `scrub(text)` replaces them, and any URL's credentials, in log records
(`recforge.logs`) and error messages (the CLI). The serving endpoints show store URLs through `redact_url`.
"""

from __future__ import annotations

import re
import threading
import urllib.parse
from collections.abc import Iterable, Iterator
from typing import Annotated, Any

from pydantic import BaseModel, PlainSerializer

MASK = "***"
_URL_CREDENTIALS = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^\s/@'\"]+)@")
_registered: set[str] = set()
_lock = threading.Lock()


def redact_url(url: str | None) -> str | None:
    """`url` with its credentials (`user:password@`, `:password@`) replaced by `***@`; host, port, path kept."""
    if not url:
        return url
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return _URL_CREDENTIALS.sub(lambda m: f"{m['scheme']}{MASK}@", url)
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{MASK}@{host}"))


def _mask(value: str | None) -> str | None:
    return MASK if value else value


SecretText = Annotated[str, PlainSerializer(_mask, return_type=str, when_used="json")]
SecretUrl = Annotated[str, PlainSerializer(redact_url, return_type=str, when_used="json")]


def _kind(field: Any) -> str | None:
    """"text" or "url" when a field's type is (or, as in `SecretText | None`, contains) a secret type."""
    return _kind_of([*getattr(field, "metadata", ())], getattr(field, "annotation", None))


def _kind_of(metadata: list[Any], annotation: Any) -> str | None:
    for meta in [*metadata, *getattr(annotation, "__metadata__", ())]:
        if isinstance(meta, PlainSerializer) and meta.func in (_mask, redact_url):
            return "text" if meta.func is _mask else "url"
    for arg in getattr(annotation, "__args__", ()) or ():
        kind = _kind_of([], arg)
        if kind is not None:
            return kind
    return None


def secret_fields(model: type[BaseModel], prefix: str = "") -> list[tuple[str, str]]:
    """Every secret field of `model` and its nested config models: (dotted path, "text" | "url")."""
    out: list[tuple[str, str]] = []
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        kind = _kind(field)
        if kind is not None:
            out.append((path, kind))
        for sub in _models(field.annotation):
            out.extend((p, k) for p, k in secret_fields(sub, f"{path}.") if (p, k) not in out)
    return out


def _models(annotation: Any) -> Iterator[type[BaseModel]]:
    """The config models an annotation holds (`X`, `X | None`, `Annotated[A | B, ...]`, ...)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
        return
    for arg in getattr(annotation, "__args__", ()) or ():
        yield from _models(arg)
    origin = getattr(annotation, "__origin__", None)
    if origin is not None and origin is not annotation:
        yield from _models(origin)


def secret_values(cfg: BaseModel) -> set[str]:
    """The secret strings a loaded config holds (tokens; a URL's password and its whole credentials)."""
    values: set[str] = set()
    for path, kind in secret_fields(type(cfg)):
        value: Any = cfg
        for part in path.split("."):
            value = getattr(value, part, None)
            if value is None:
                break
        if not isinstance(value, str) or not value:
            continue
        if kind == "text":
            values.add(value)
            continue
        try:
            parts = urllib.parse.urlsplit(value)
        except ValueError:
            continue
        if "@" in parts.netloc:
            userinfo = parts.netloc.rsplit("@", 1)[0]
            values.update(v for v in (userinfo, parts.password, urllib.parse.unquote(parts.password or "")) if v)
    return {v for v in values if len(v) >= 3}


def register(cfg: BaseModel) -> None:
    """Remember `cfg`'s secret values for `scrub` (this process only)."""
    add(secret_values(cfg))


def add(values: Iterable[str]) -> None:
    with _lock:
        _registered.update(v for v in values if v and len(v) >= 3)


def scrub(text: str) -> str:
    """`text` with every registered secret value and every URL's credentials replaced by `***`."""
    if not text:
        return text
    out = _URL_CREDENTIALS.sub(lambda m: f"{m['scheme']}{MASK}@", text)
    with _lock:
        values = sorted(_registered, key=len, reverse=True)
    for v in values:
        if v in out:
            out = out.replace(v, MASK)
    return out


def redact_doc(doc: Any) -> Any:
    """A nested dict/list (a config as plain data) with `scrub` applied to every string."""
    if isinstance(doc, dict):
        return {k: redact_doc(v) for k, v in doc.items()}
    if isinstance(doc, list | tuple):
        return [redact_doc(v) for v in doc]
    return scrub(doc) if isinstance(doc, str) else doc


__all__ = ["MASK", "SecretText", "SecretUrl", "add", "redact_doc", "redact_url", "register", "scrub",
           "secret_fields", "secret_values"]

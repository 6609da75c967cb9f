"""docs/config.md is generated from the config models: these tests keep the committed page and the models'
descriptions from drifting apart (the reason the page is generated at all)."""

from __future__ import annotations

import difflib

import pytest

from recforge import configdoc


def test_committed_config_doc_matches_the_models() -> None:
    committed = configdoc.DOC_PATH.read_text() if configdoc.DOC_PATH.is_file() else ""
    generated = configdoc.render()
    if committed != generated:
        diff = "".join(list(difflib.unified_diff(committed.splitlines(keepends=True),
                                                 generated.splitlines(keepends=True),
                                                 "docs/config.md (committed)", "docs/config.md (generated)"))[:60])
        pytest.fail(f"docs/config.md differs from what the config models generate; run `{configdoc.REGENERATE}` "
                    f"and commit the result. First differences:\n{diff}")


def test_every_config_field_has_a_description() -> None:
    missing = configdoc.undescribed_keys()
    assert not missing, (f"{len(missing)} config keys have no Field(description=...), so docs/config.md cannot say "
                         f"what they do; add one to each:\n  " + "\n  ".join(missing))


def test_the_page_documents_every_key_with_its_default_and_constraints() -> None:
    """Spot checks of the rendering itself: dotted keys, factory defaults, bounds, union variants, model params."""
    text = configdoc.render()
    rows = {r.key: r for r in configdoc.build_page().rows()}
    assert rows["split.valid_fraction"].constraints == "0 <= x < 1"
    assert rows["features.categorical[].min_freq"].constraints == ">= 1"
    assert rows["source.extra_columns"].default == "`{Description: description, Country: country}`"
    assert rows["source.start_date"].default == '`"2026-01-01"`'  # quoted: unquoted YAML reads a date
    assert rows["online_store.type"].default == "required"  # the union's tag, though SQLite's model defaults it
    assert rows["entities.<name>.ttl_days"].type == "float | null"
    assert rows["train.model_params.dcnv2.mlp"].default == "`[256, 128]`"
    for anchor in ("paths", "source", "features", "split", "entities", "profiles", "prepare", "online_store",
                   "train", "retrieval", "index", "registry", "serving", "model-params"):
        assert text.count(f'<a id="{anchor}"></a>') == 1, anchor


def test_check_exits_1_naming_the_command_when_the_page_is_stale(tmp_path, capsys) -> None:
    stale = tmp_path / "config.md"
    stale.write_text("# Config reference\n")
    assert configdoc.main(["--check", "--output", str(stale)]) == 1
    assert configdoc.REGENERATE in capsys.readouterr().err
    assert configdoc.main(["--output", str(stale)]) == 0
    assert configdoc.main(["--check", "--output", str(stale)]) == 0

"""Property-based checks of the two parsers users feed by hand: job configs and data shards.

Whatever the input, the outcome is either a valid object or one `ConfigError`/`DataError` line;
never another exception, never a multi-line message.
"""

from __future__ import annotations

import io
import json

import hypothesis.strategies as st
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from hypothesis import HealthCheck, given, settings

from distinception.config import (
    MOVED,
    ConfigError,
    JobConfig,
    apply_overrides,
    from_dict,
    load_yaml,
)
from distinception.data.loader import decode
from distinception.data.shards import (
    MANIFEST_NAME,
    DataError,
    open_manifest,
    open_parquet,
    resolve,
    verify,
)
from distinception.recipes import get_recipe

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

FIELDS = sorted(get_recipe("tiny").flat())
SECTIONS = sorted({k.split(".")[0] for k in FIELDS})

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["bound:2", "bound:-1", "scale", "1e-3", ".inf", "caffe", "bn", "sgd"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=6,
)
#: Real fields, the old names of moved ones (`ps.lr`), and stray keys.
keys = st.one_of(
    st.sampled_from(FIELDS), st.sampled_from(sorted(MOVED)), st.text(max_size=10), st.integers()
)


def _one_line(err: Exception) -> None:
    text = str(err)
    assert text and "\n" not in text and "\r" not in text, repr(text)


@st.composite
def config_docs(draw):
    """Nested mappings that mostly hit real fields, with arbitrary values and stray keys."""
    doc: dict = {}
    for key in draw(st.lists(keys, max_size=6)):
        if isinstance(key, str) and "." in key:
            section, field = key.split(".", 1)
            doc.setdefault(section, {})
            if isinstance(doc[section], dict):
                doc[section][field] = draw(values)
        else:
            doc[key] = draw(values)
    if draw(st.booleans()):
        doc[draw(st.sampled_from(SECTIONS))] = draw(values)
    return doc


@SETTINGS
@given(config_docs())
def test_from_dict_gives_a_config_or_one_line(doc):
    base = get_recipe("tiny")
    try:
        cfg = from_dict(doc, base)
    except ConfigError as err:
        _one_line(err)
        return
    assert isinstance(cfg, JobConfig)
    # What was accepted round-trips: YAML out, YAML in, the same config.
    assert from_dict(yaml.safe_load(cfg.to_yaml())) == cfg


@SETTINGS
@given(st.lists(st.text(max_size=30), max_size=4))
def test_overrides_give_a_config_or_one_line(items):
    try:
        cfg = apply_overrides(get_recipe("tiny"), items)
    except ConfigError as err:
        _one_line(err)
        return
    assert isinstance(cfg, JobConfig)


@SETTINGS
@given(
    field=st.sampled_from([f for f in FIELDS if "." in f]),
    raw=st.one_of(st.text(max_size=20), st.from_regex(r"-?[0-9]{1,400}(\.[0-9]+)?(e-?[0-9]+)?")),
)
def test_any_value_for_any_field_gives_a_config_or_one_line(field, raw):
    try:
        cfg = apply_overrides(get_recipe("tiny"), [f"{field}={raw}"])
    except ConfigError as err:
        _one_line(err)
        assert field.split(".")[0] in str(err) or "--set" in str(err)
        return
    section, name = field.split(".")
    assert getattr(getattr(cfg, section), name) is not None


@SETTINGS
@given(
    old=st.sampled_from(sorted(MOVED)),
    raw=st.one_of(st.text(max_size=20), st.from_regex(r"-?[0-9]{1,400}(\.[0-9]+)?(e-?[0-9]+)?")),
)
def test_an_old_key_gives_what_its_new_key_gives(old, raw):
    """Any value under a moved key's old name: the same config, or the same one-line error."""

    def outcome(key: str) -> object:
        try:
            return apply_overrides(get_recipe("tiny"), [f"{key}={raw}"])
        except ConfigError as err:
            _one_line(err)
            return str(err)

    assert outcome(old) == outcome(MOVED[old])


@SETTINGS
@given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_load_yaml_of_arbitrary_bytes(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("yaml") / "job.yaml"
    path.write_bytes(data)
    try:
        cfg = load_yaml(path, base=get_recipe("tiny"))
    except ConfigError as err:
        _one_line(err)
        return
    assert isinstance(cfg, JobConfig)


# -- the shard reader ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reader_root(tmp_path_factory):
    return tmp_path_factory.mktemp("reader")


manifest_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-3, 10), st.text(max_size=6)),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=8,
)


@st.composite
def manifests(draw):
    """Manifest documents near the real shape: right keys, wrong or inconsistent values."""
    doc = {
        "format_version": draw(st.sampled_from([1, 1, 1, 2, "1", None])),
        "classes": draw(st.lists(st.text(max_size=4), max_size=3) | manifest_values),
        "counts": draw(st.dictionaries(st.sampled_from(["train", "val"]), st.integers(-2, 40))),
        "class_counts": draw(
            st.dictionaries(
                st.sampled_from(["train", "val"]), st.lists(st.integers(-2, 20), max_size=3)
            )
        ),
        "files": draw(
            st.dictionaries(
                st.sampled_from(["train", "val"]),
                st.lists(
                    st.fixed_dictionaries(
                        {
                            "name": st.sampled_from(["a.parquet", "missing.parquet", "../x"]),
                            "rows": st.integers(-1, 20),
                            "bytes": st.integers(-1, 10_000),
                        }
                    ),
                    max_size=2,
                ),
            )
        ),
    }
    for key in draw(st.lists(st.sampled_from(sorted(doc)), max_size=2)):
        doc[key] = draw(manifest_values)  # damage a whole entry now and then
    return doc


def _write_rows(path, n: int) -> None:
    images = [b"\xff\xd8\xff" + bytes([i]) for i in range(n)]
    table = pa.table(
        {
            "image": pa.array(images, pa.binary()),
            "label": pa.array([i % 2 for i in range(n)], pa.int32()),
            "key": pa.array([str(i) for i in range(n)]),
        }
    )
    pq.write_table(table, path)


@SETTINGS
@given(doc=manifests(), rows=st.integers(0, 6))
def test_any_manifest_opens_and_verifies_or_fails_in_one_line(reader_root, doc, rows):
    root = reader_root / "set"
    root.mkdir(exist_ok=True)
    _write_rows(root / "a.parquet", rows)
    (root / MANIFEST_NAME).write_text(json.dumps(doc))
    try:
        manifest = open_manifest(str(root))
        verify(manifest)
    except DataError as err:
        _one_line(err)
        return
    # Accepted: the manifest agrees with what is on disk.
    for split, files in manifest.files.items():
        assert manifest.counts[split] == sum(f.rows for f in files)


@SETTINGS
@given(st.binary(max_size=400))
def test_any_bytes_as_a_shard_fail_in_one_line(reader_root, data):
    path = reader_root / "junk.parquet"
    path.write_bytes(data)
    fs, _ = resolve(str(reader_root))
    try:
        open_parquet(fs, str(path))
    except DataError as err:
        _one_line(err)
        return
    raise AssertionError("random bytes were accepted as a Parquet shard")


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_truncated_shards_fail_in_one_line(reader_root, data):
    buf = io.BytesIO()
    _write_rows(buf, 8)
    whole = buf.getvalue()
    cut = data.draw(st.integers(0, len(whole) - 1))
    path = reader_root / "cut.parquet"
    path.write_bytes(whole[:cut])
    fs, _ = resolve(str(reader_root))
    with pytest.raises(DataError) as err:
        open_parquet(fs, str(path))
    _one_line(err.value)


@SETTINGS
@given(
    st.binary(max_size=300) | st.just(b"") | st.binary(max_size=200).map(b"\xff\xd8\xff".__add__)
)
def test_decode_of_any_bytes_is_an_image_or_none(data):
    img = decode(data)
    if img is not None:
        assert img.dim() == 3 and img.shape[0] == 3

"""What each file of a run directory may hold, checked when it is read: one `UserError` naming the file and field.

A results directory may be edited by hand, damaged, or written by another version; nothing read from it is used
before it passes here. The rules (types, ranges, shapes, finite values, sizes) are written as data, so the
message says what a field must be:

    metrics.json      an object of numbers, text, true/false or null; none of the run's own fields (RESERVED)
    config.json       an object of option groups (at most MAX_DEPTH deep), a strategy name, a seed >= 0
    data.json         class names (unique), class pairs, image counts per split
    model.json        the network's recipe (check_model)
    predictions.csv   split, labels in range, one finite probability per class, sets of class indices; vote
                      shares per class (v_0..) where the images have votes

>>> check_config({"strategy": "soft", "seed": "zero"}, "config.json")
Traceback (most recent call last):
...
ambig_bench.errors.UserError: config.json: field 'seed' must be an integer >= 0, got 'zero'
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pandas as pd

from ambig_bench.errors import UserError
from ambig_bench.shown import shown

Check = tuple[Callable[[Any], bool], str]  # a test of a field's value, and what the error says it must be

RESERVED = ("run", "status", "error", "strategy", "seed")  # a run's own fields: a metric by these names would hide them
MAX_DEPTH = 4  # config.json: groups within groups (source -> blend -> between_fraction) are 3 deep
MAX_KEYS = 10_000  # fields of one object; a run writes a few dozen
MAX_TEXT = 100_000  # characters of one text field
MAX_INT = 2**63 - 1  # seeds, counts: what numpy and torch hold
SPLITS = ("val", "test")  # predictions.csv rows
TOLERANCE = 1e-6  # a probability written as text may round past 0 or 1 by this much


def what(value: Any) -> str:
    """A value as an error line shows it: short, escaped."""
    text = shown(repr(value))
    return text if len(text) <= 60 else f"{text[:57]}..."


def kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "text", bool: "true/false", type(None): "null"}.get(
        type(value), "a number")


def integer(low: int, high: int = MAX_INT) -> Check:
    """An integer in low..high (JSON true is a bool, not a number)."""
    above = f" in {low}..{high}" if high < MAX_INT else f" >= {low}"
    return (lambda v: isinstance(v, int) and not isinstance(v, bool) and low <= v <= high), f"an integer{above}"


def number(low: float = -math.inf, high: float = math.inf) -> Check:
    """A finite number in [low, high]."""
    where = f" in [{low:g}, {high:g}]" if math.isfinite(low) or math.isfinite(high) else ""
    return ((lambda v: isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
             and low <= v <= high), f"a finite number{where}")


def optional(check: Check) -> Check:
    test, said = check
    return (lambda v: v is None or test(v)), f"{said} or null"


TEXT: Check = (lambda v: isinstance(v, str) and len(v) <= MAX_TEXT, "text")
NAME: Check = (lambda v: isinstance(v, str) and 0 < len(v) <= 200, "a name (text of 1 to 200 characters)")
OBJECT: Check = (lambda v: isinstance(v, dict), "an object")
SCALAR: Check = (lambda v: v is None or isinstance(v, bool | str) or number()[0](v),
                 "a finite number, text, true/false or null")


def names(at_least: int = 2) -> Check:
    """A list of distinct class names."""
    return ((lambda v: isinstance(v, list) and at_least <= len(v) <= MAX_KEYS and all(NAME[0](n) for n in v)
             and len(set(v)) == len(v)), f"a list of at least {at_least} distinct names")


PAIRS: Check = (lambda v: isinstance(v, list) and all(isinstance(p, list) and len(p) == 2 and all(
    integer(0)[0](c) for c in p) and p[0] != p[1] for p in v), "a list of [a, b] pairs of two class indices")


def fail(path: object, field: str, must: str, value: Any) -> UserError:
    return UserError(f"{path}: field {field!r} must be {must}, got {what(value)}")


def check_fields(doc: Any, path: object, checks: Mapping[str, Check], required: tuple[str, ...] = ()) -> dict:
    """`doc` as an object whose fields pass `checks` (where present; `required` ones must be)."""
    if not isinstance(doc, dict):
        raise UserError(f"{path}: must hold a JSON object, got {kind(doc)}")
    if len(doc) > MAX_KEYS:
        raise UserError(f"{path}: {len(doc):,} fields, more than a run writes ({MAX_KEYS:,})")
    for key in required:
        if key not in doc:
            raise UserError(f"{path}: field {key!r} is missing")
    for key, (ok, must) in checks.items():
        if key in doc and not ok(doc[key]):
            raise fail(path, key, must, doc[key])
    return doc


def check_class_indices(doc: dict, path: object, classes: int) -> None:
    """Every class pair of `doc` names classes below `classes`."""
    if not all(c < classes for p in doc.get("pairs", []) for c in p):
        raise fail(path, "pairs", f"class indices below {classes}", doc["pairs"])


# -- metrics.json ----------------------------------------------------------------------------------------------
def check_metrics(doc: Any, path: object, bounds: Mapping[str, tuple[float, float]] | None = None,
                  required: tuple[str, ...] = (), reserved: tuple[str, ...] = ()) -> dict:
    """metrics.json: flat fields of SCALAR values, none RESERVED (or in `reserved`); each metric of `bounds` in
    its range or null/NaN (not measured: never averaged in), and every `required` one measured."""
    check_fields(doc, path, {})
    for key, value in doc.items():
        if key in RESERVED or key in reserved:
            raise UserError(f"{path}: field {key!r} is the run's own, not a metric; remove it")
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue  # not measured (runs of earlier versions wrote NaN for null): never averaged in
        if bounds and key in bounds:
            low, high = bounds[key]
            if not number(low, high)[0](value):
                raise fail(path, key, f"{number(low, high)[1]} or null", value)
        elif not SCALAR[0](value):
            raise fail(path, key, SCALAR[1], value)
    for key in required:
        value = doc.get(key)
        if not number()[0](value):
            raise fail(path, key, "a measured (finite) number", value)
    return doc


# -- config.json -----------------------------------------------------------------------------------------------
def flatten_config(config: dict, path: object = "config.json") -> dict:
    """config.json's fields by their flat option names, whether the file is flat (older runs) or nested in groups.

    A group's `name` is named after the group ("model": {"name": ...} is the option `model`). Groups deeper than
    MAX_DEPTH are refused (walked without recursion: the depth is the file's).

    >>> flatten_config({"strategy": "soft", "data": {"dataset": "digits"}, "model": {"name": "small-cnn", "lr": 0.1}})
    {'strategy': 'soft', 'dataset': 'digits', 'model': 'small-cnn', 'lr': 0.1}
    """
    flat: dict = {}
    stack = [("", iter(config.items()))]  # (group name, its fields not yet walked)
    while stack:
        within, fields = stack[-1]
        item = next(fields, None)
        if item is None:
            stack.pop()
            continue
        key, value = item
        if isinstance(value, dict):
            if len(stack) >= MAX_DEPTH:
                raise UserError(f"{path}: option groups nested deeper than {MAX_DEPTH} (at {what(key)})")
            stack.append((key, iter(value.items())))
        elif isinstance(value, list | tuple) and all(SCALAR[0](v) for v in value) or SCALAR[0](value):
            flat[within if key == "name" and within else key] = value
        else:
            raise fail(path, key, "a finite number, text, true/false, null or a list of them", value)
    return flat


CONFIG: dict[str, Check] = {"strategy": NAME, "seed": integer(0)}
GROUPS = ("data", "model", "train", "runtime")  # config.GROUPS: objects wherever config.json is nested in groups
GROUP_KEYS = {"data": "dataset", "model": "name", "train": "epochs"}


def check_config(doc: Any, path: object) -> dict:
    """config.json: an object of option groups with a strategy name and a seed >= 0; returns it flat."""
    check_fields(doc, path, {})
    if any(isinstance(v, dict) for v in doc.values()):  # nested (this version): its groups are objects
        check_fields(doc, path, dict.fromkeys(GROUPS, (lambda v: isinstance(v, dict), "an object (option group)")))
        for group, key in GROUP_KEYS.items():  # what every version's group holds: an experiment is told by them
            if group in doc and key not in doc[group]:
                raise UserError(f"{path}: field {group!r} lacks its {key!r}")
    flat = flatten_config(doc, path)
    return check_fields(flat, path, CONFIG, required=tuple(CONFIG))


def check_failed(doc: Any, path: object) -> str:
    """FAILED: why training broke."""
    return check_fields(doc, path, {"error": TEXT}, required=("error",))["error"]


# -- data.json, env.json ---------------------------------------------------------------------------------------
COUNTS: Check = (lambda v: isinstance(v, dict) and all(
    isinstance(c, dict) and all(integer(0)[0](n) for n in c.values()) for c in v.values()),
    "an object of splits, each an object of image counts (integers >= 0)")
DATA: dict[str, Check] = {
    "class_names": names(), "pairs": PAIRS, "counts": COUNTS, "between_source": optional(NAME),
    "dataset": optional(TEXT), "origin": optional(TEXT), "image_policy": OBJECT,
    "image_shape": (lambda v: isinstance(v, list) and all(integer(1)[0](n) for n in v), "a list of sizes >= 1"),
    "notes": (lambda v: isinstance(v, list) and all(TEXT[0](n) for n in v), "a list of text"),
}
ENV: dict[str, Check] = {"device": TEXT, "gpu": optional(TEXT), "platform": TEXT, "python": TEXT, "torch": TEXT}


def check_data(doc: Any, path: object) -> dict:
    """data.json: the fields a report reads, typed; pairs within the classes."""
    check_fields(doc, path, DATA)
    if "class_names" in doc:
        check_class_indices(doc, path, len(doc["class_names"]))
    return doc


def check_env(doc: Any, path: object) -> dict:
    """env.json: versions and device, as text."""
    return check_fields(doc, path, ENV)


# -- model.json ------------------------------------------------------------------------------------------------
def model_fields(max_side: int, max_width: int) -> dict[str, Check]:
    """What rebuilding a run's network needs from model.json (its sizes bounded by the options' limits)."""
    return {
        "model": NAME, "width": integer(0, max_width), "in_channels": ((lambda v: v in (1, 3) and not isinstance(
            v, bool)), "1 or 3"),
        "image_size": integer(1, max_side), "image_width": optional(integer(1, max_side)), "strategy": NAME,
        "num_outputs": integer(1, MAX_KEYS), "class_names": names(), "pairs": PAIRS,
        "tta": ((lambda v: v in (0, 1, 2) and not isinstance(v, bool)), "0, 1 or 2"),
        "threshold": optional(number()),
    }


def check_model(doc: Any, path: object, max_side: int, max_width: int) -> dict:
    """model.json: the recipe's fields (every one required but image_width, absent in older runs)."""
    fields = model_fields(max_side, max_width)
    check_fields(doc, path, fields, required=tuple(k for k in fields if k != "image_width"))
    check_class_indices(doc, path, len(doc["class_names"]))
    return doc


# -- predictions.csv -------------------------------------------------------------------------------------------
def refuse_rows(path: object, frame: pd.DataFrame, bad: pd.Series | np.ndarray, column: str, must: str) -> None:
    """One line naming the first row where `bad` holds (its line in the file: the header is line 1)."""
    bad = np.asarray(bad, dtype=bool)
    if bad.any():
        row = int(np.argmax(bad))
        raise UserError(f"{path}: line {row + 2}: column {column!r} must be {must}, got "
                        f"{what(frame[column].iloc[row])}")


def check_predictions(frame: pd.DataFrame, path: object, data: Mapping) -> tuple[pd.DataFrame, int]:
    """predictions.csv: split (val/test), label_a in 0..K-1, label_b in -1..K-1, pred_set ("4|9") of class
    indices, one finite probability p_0..p_{K-1} per class, and for images with votes their shares v_0..v_{K-1}
    (optional: runs on images without votes, and older runs, have none); K and the rows per split as data.json
    (`data`) says where it says. Returns the frame with numeric columns and pred_set as text ("" for an empty
    set), and K."""
    k = sum(str(c).startswith("p_") for c in frame.columns)
    needed = ["split", "label_a", "label_b", "pred_set"] + [f"p_{i}" for i in range(max(k, 2))]
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise UserError(f"{path}: not an ambig-bench predictions file (missing columns {', '.join(missing)})")
    classes = len(data.get("class_names", [])) or k
    if k != classes:
        raise UserError(f"{path}: {k} probability columns (p_0..p_{k - 1}), but data.json has {classes} classes")
    refuse_rows(path, frame, ~frame.split.isin(SPLITS), "split", " or ".join(SPLITS))
    vote_columns = [f"v_{i}" for i in range(k)]
    found_votes = [str(c) for c in frame.columns if str(c).startswith("v_")]
    if found_votes and sorted(found_votes) != sorted(vote_columns):
        raise UserError(f"{path}: vote columns {', '.join(found_votes[:3])}{'...' if len(found_votes) > 3 else ''} "
                        f"must be v_0..v_{k - 1}, one per class")
    numbers = {}
    for column, low, high, must in [("label_a", 0, k - 1, f"a class index in 0..{k - 1}"),
                                    ("label_b", -1, k - 1, f"a class index in 0..{k - 1}, or -1")] + [
            (f"p_{i}", -TOLERANCE, 1 + TOLERANCE, "a finite probability in [0, 1]") for i in range(k)] + [
            (c, -TOLERANCE, 1 + TOLERANCE, "a finite vote share in [0, 1]") for c in vote_columns if found_votes]:
        values = pd.to_numeric(frame[column], errors="coerce").astype(float)
        ok = np.isfinite(values) & (values >= low) & (values <= high)
        refuse_rows(path, frame, ~(ok & ((values % 1 == 0) | (not column.startswith("label")))), column, must)
        numbers[column] = values.astype(int) if column.startswith("label") else values
    if found_votes:  # one label is drawn from each row's shares: they must hold some vote
        refuse_rows(path, frame, pd.DataFrame(numbers)[vote_columns].sum(axis=1) <= 0, "v_0",
                    f"one of vote shares v_0..v_{k - 1} that sum to more than 0")
    sets = frame.pred_set.fillna("").astype(str)
    tokens = sets.str.split("|").explode()
    tokens = tokens[tokens != ""]
    bad_token = ~tokens.str.fullmatch(r"\d{1,9}") | (pd.to_numeric(tokens, errors="coerce") >= k)
    refuse_rows(path, frame, frame.index.isin(tokens[bad_token.fillna(True)].index), "pred_set",
                f"class indices in 0..{k - 1} joined by | (e.g. 4|9)")
    frame = frame.assign(pred_set=sets, **numbers)
    for split in SPLITS:
        expected = data.get("counts", {}).get(split, {})
        rows = frame[frame.split == split]
        found = {"clear": int((rows.label_b < 0).sum()), "between": int((rows.label_b >= 0).sum())}
        for part, n in found.items():
            if part in expected and expected[part] != n:
                raise UserError(f"{path}: {n} {split} rows of {part} images, but data.json counts "
                                f"{expected[part]} (a truncated or edited file)")
    if not (frame.split == "val").any():
        raise UserError(f"{path}: no validation rows to calibrate conformal sets on")
    return frame, k

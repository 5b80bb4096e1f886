"""Schemathesis against the service in-process (ASGI, nothing on the network): every operation of the
OpenAPI schema, valid and invalid inputs, with all of Schemathesis's checks (no 5xx, only documented
statuses, content types and bodies as the schema says, auth enforced, invalid data refused, valid data
accepted). The number of examples is bounded so the whole file runs in about a minute.

A file field's schema allows any bytes, but the service takes images only: the fuzzer's valid cases get
small PNG hand photos (its invalid cases still send whatever it makes), and a valid case may be refused
only for bytes that are not a usable image. A multipart field given another JSON type is text on the
wire, so an invalid case made only of such values, valid as text, may be accepted. Every other check is
Schemathesis's own.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import pytest

pytest.importorskip("schemathesis")
import schemathesis  # noqa: E402
from hypothesis import HealthCheck, settings, strategies as st  # noqa: E402
from schemathesis.specs.openapi import formats  # noqa: E402
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance  # noqa: E402

from serve_helpers import add_keys, enrolled_gallery, make_assets, png_bytes  # noqa: E402

from handclip.data.query_transform import CROP_PATTERN  # noqa: E402
from handclip.gallery.case_compare import COMPARE_PATTERN  # noqa: E402

KEY: dict[str, str] = {}
EXAMPLES = 16


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory):
    from handclip.serve.app import create_app
    from handclip.serve.keys import KeyStore
    from handclip.serve.limits import Limits
    from handclip.serve.security import LOOPBACK_NAMES
    from handclip.serve.state import ServiceState
    from handclip.synthetic.render import render_hand

    root = tmp_path_factory.mktemp("fuzz")
    assets = make_assets(root / "assets", num_ids=3, images_per_id=2)
    index = enrolled_gallery(assets, root / "gallery")
    add_keys(index)
    KEY["all"] = KeyStore(index).add("Fuzzer", ["search", "enrol", "review"])[0]
    photos = [png_bytes(render_hand(200 + i, 0).resize((32, 32))) for i in range(4)]
    saved = formats.STRING_FORMATS.get("binary")
    schemathesis.openapi.format("binary", st.sampled_from(photos))
    state = ServiceState(index, calibration=str(assets["calibration"]), device="cpu",
                         limits=Limits(max_request_bytes=2 * 2**20, max_pixels=1_000_000), batch_size=8)
    # The fuzzer's client sends Host "testserver": allowed here, on top of the loopback names.
    app = create_app(state, allowed_hosts=(*LOOPBACK_NAMES, "testserver"))
    yield schemathesis.openapi.from_asgi("/openapi.json", app)
    if saved is None:
        formats.unregister_string_format("binary")
    else:
        formats.STRING_FORMATS["binary"] = saved
    shutil.rmtree(Path(index) / "serve", ignore_errors=True)


OPERATIONS = [("POST", "/api/v1/search"), ("GET", "/api/v1/reports/{report_id}"), ("POST", "/api/v1/enrol"),
              ("GET", "/api/v1/identities"), ("GET", "/api/v1/identities/{identity}"),
              ("POST", "/api/v1/identities/{identity}/redact"),
              ("GET", "/api/v1/images/{sha256}/thumbnail"), ("GET", "/api/v1/health"),
              ("GET", "/api/v1/cases/{case_id}/searches"), ("GET", "/api/v1/cases/{case_id}/searches/{record}"),
              ("GET", "/api/v1/cases/{case_id}/export"), ("GET", "/api/v1/images/{sha256}"),
              ("GET", "/api/v1/searches/{record}/query")]
NO_INPUTS = {"/api/v1/identities", "/api/v1/health"}  # nothing to make invalid but the key


def valid_data_accepted_unless_not_an_image(ctx, response, case):
    """Schemathesis's positive_data_acceptance, except that a file the schema allows (any bytes) may be
    refused for not being a usable image: 413, 415 or 422 naming the uploaded file, nothing else; and a
    search stating an aspect the gallery holds no images of may be refused (422 saying so)."""
    if case.meta is not None and case.meta.generation.mode.is_positive and response.status_code in (413, 415, 422):
        error = json.loads(response.content or b"{}").get("error", "")
        if error.startswith(("uploaded file", "uploaded image")):
            return None
        # a crop box is held to the uploaded image's size, which no schema can state
        if re.match(r"crop [\d,]+ (leaves image|of image)", error):
            return None
        # so are the compare ranks, to top_k and to one another
        if re.match(r"compare '[\d,-]+': ", error):
            return None
        if response.status_code == 422 and re.match(r"gallery .* holds no images of aspect ", error):
            return None
    return positive_data_acceptance(ctx, response, case)


# What each multipart form field accepts once on the wire, where every value is text.
_BOOLEANS = {"true", "false", "1", "0", "yes", "no", "on", "off", "t", "f", "y", "n"}
WIRE_VALID = {
    "case_id": lambda text: True, "identity": lambda text: True,  # text: length and pattern checked by the service
    "top_k": lambda text: text.strip().lstrip("+").isdigit() and 1 <= int(text) <= 100,
    "report": lambda text: text.strip().lower() in _BOOLEANS,
    "by": lambda text: text in ("identity", "image"),
    "index_type": lambda text: text in ("auto", "flat", "pca", "ivf", "hnsw"),
    "aspect": lambda text: text in ("dorsal_r", "dorsal_l", "palmar_r", "palmar_l"),
    "gallery_aspect": lambda text: text in ("dorsal_r", "dorsal_l", "palmar_r", "palmar_l"),
    "mirror": lambda text: text.strip().lower() in _BOOLEANS,
    "mirror_aspect": lambda text: text.strip().lower() in _BOOLEANS,
    "crop": lambda text: re.fullmatch(CROP_PATTERN, text) is not None,
    "rotate": lambda text: _finite_within(text, 360),
    "compare": lambda text: re.fullmatch(COMPARE_PATTERN, text) is not None,
}


def _finite_within(text: str, limit: float) -> bool:
    try:
        return math.isfinite(float(text)) and abs(float(text)) <= limit
    except ValueError:
        return False


def _text_on_the_wire(mutation) -> bool:
    """A mutation that gives a form field another JSON type whose text, as sent, is still valid for it."""
    parts = mutation.schema_pointer.split("/")
    if not (mutation.operator == "change_type" and mutation.parameter_location == "body" and len(parts) > 2
            and parts[1] == "properties" and parts[2] in WIRE_VALID):
        return False
    value = mutation.new_value
    return WIRE_VALID[parts[2]](value if isinstance(value, str) else json.dumps(value))


def invalid_data_refused_unless_text_on_the_wire(ctx, response, case):
    """Schemathesis's negative_data_rejection, except for a case whose only "invalid" values are form
    fields given another JSON type whose text is valid for the field (an object as a case id, the number
    5 as top_k "5"): a multipart field is text on the wire, so the service rightly reads it as text."""
    data = case.meta.phase.data if case.meta is not None else None
    mutations = getattr(data, "mutations", None) or []
    if 200 <= response.status_code < 300 and mutations and all(_text_on_the_wire(m) for m in mutations):
        return None
    # An optional form field made an empty list sends no part at all: the request on the wire simply
    # leaves the field out, which is valid.
    body = case.body if isinstance(case.body, dict) else {}
    if 200 <= response.status_code < 300 and any(body.get(name) == [] for name in WIRE_VALID):
        return None
    return negative_data_rejection(ctx, response, case)


def test_the_schema_lists_every_operation(api_schema):
    assert {(op.method.upper(), op.path) for op in (r.ok() for r in api_schema.get_all_operations())} == set(OPERATIONS)


# Schemathesis's own pytest collection reads an attribute pytest 9 no longer has (Node._nodeid), so each
# operation's cases are drawn from its Hypothesis strategies here and sent with the same checks.
@pytest.mark.parametrize("mode", ["positive", "negative"])
@pytest.mark.parametrize("method, path", OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_every_operation_answers_as_its_schema_says(api_schema, method, path, mode):
    from hypothesis import given
    from schemathesis.generation import GenerationMode

    if mode == "negative" and path in NO_INPUTS:
        pytest.skip("no input to make invalid")
    operation = api_schema[path][method]

    @given(case=operation.as_strategy(generation_mode=GenerationMode(mode)))
    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
              database=None)
    def sends(case):
        case.call_and_validate(headers={"X-API-Key": KEY["all"]},
                               excluded_checks=[positive_data_acceptance, negative_data_rejection],
                               additional_checks=[valid_data_accepted_unless_not_an_image,
                                                  invalid_data_refused_unless_text_on_the_wire])

    sends()

"""docs/openapi.yaml describes the server: schemathesis throws schema-derived valid and
invalid requests at a live busd and checks every answer against the document.

Checks: no 5xx, status codes / content types / headers / bodies as documented, and
invalid requests refused with a 4xx. Not checked: that every schema-valid event is
accepted — a well-formed event for an undeclared namespace is rightly a 400.
"""

from __future__ import annotations

from pathlib import Path

import pytest

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is in the test extra")

from busclient import BusServer, request  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis.checks import CHECKS  # noqa: E402
from schemathesis.config import SchemathesisConfig  # noqa: E402

DOC = Path(__file__).resolve().parents[2] / "docs" / "openapi.yaml"
# a query too long for the HTTP layer is refused there, before any parameter is read: a 414
# is as much a rejection of invalid data as the API's 400
REJECTIONS = [*SchemathesisConfig().projects.default.checks.negative_data_rejection
              .expected_statuses, "414"]
schema = schemathesis.openapi.from_path(str(DOC), config=SchemathesisConfig.from_dict(
    {"checks": {"negative_data_rejection": {"expected-statuses": REJECTIONS}}}))
EXCLUDED = [check for check in CHECKS.get_all()
            if check.__name__ == "positive_data_acceptance"]


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    # one namespace named like the generator's favourite subjects would be luck; instead
    # declare a few, and let undeclared ones be 400s as documented
    server = BusServer(tmp_path_factory.mktemp("openapi") / "data", "app,orders,A,a,0,_,-",
                       "--ping-interval", "1s").start()
    yield f"http://127.0.0.1:{server.port}", server
    server.close()


@schema.parametrize()
@settings(max_examples=20, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
def test_api_conforms_to_openapi(case, live):
    base_url, _ = live
    case.call_and_validate(base_url=base_url, timeout=0.3, excluded_checks=EXCLUDED)


def test_every_operation_is_a_test_of_its_own(request):
    """The suite runs on pytest-xdist, which hands tests to its workers by node id: tests
    sharing one run once for all (pytest 9 gives every operation's test the function's id,
    hence `pytest<9` in the test extra)."""
    ids = [item.nodeid for item in request.session.items
           if item.originalname == "test_api_conforms_to_openapi"]
    operations = list(schema.get_all_operations())
    assert ids and len(set(ids)) == len(ids) == len(operations), ids


def test_document_lists_every_route():
    text = DOC.read_text()
    for route in ("/:", "/healthz:", "/metrics:", "/stats:", "/ui:", "post:", "get:", "put:", "options:",
                  "\"507\"", "\"401\"", "\"403\"", "text/event-stream"):
        assert route in text


def test_server_still_healthy_after_schemathesis(live):
    base_url, server = live
    assert request(server.port, "GET", "/healthz").status == 200
    log = server.log()
    assert "Traceback" not in log and "Exception in callback" not in log

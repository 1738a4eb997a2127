"""One cluster per broker for the whole run (building one takes ~12 s of two cores, tearing
it down ~5 s); each test leaves it as it found it: links mended, API hosts serving, doubles
reset. A test that adds a GPU host leaves it in the fleet, so no test counts the hosts.
Selected with `-m cluster`.

It needs root (namespaces, veth links), iproute2 and HAProxy; `make services`
(docker/local-services.sh) installs HAProxy from Debian's packages. Without them the tests are
skipped, saying which is missing."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from tests.cluster.harness import Cluster
from tests.cluster.services import Broker, RabbitBroker, RedisBroker
from tests.support.rabbitmq import SERVER_BIN

# Every cluster test runs once per broker here; another broker (RabbitMQ) joins by adding
# its `Broker` (tests/cluster/services.py): started on the data host, answering its URL.
BROKERS: dict[str, type[Broker]] = {"redis": RedisBroker, "rabbitmq": RabbitBroker}


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "the cluster harness needs root (network namespaces)"
    for tool in ("ip", "haproxy", "redis-server"):
        if shutil.which(tool) is None:
            return f"the cluster harness needs `{tool}` (docker/local-services.sh installs it)"
    return None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    reason = _missing()
    for item in items:
        if "tests/cluster/" in str(item.fspath):
            item.add_marker(pytest.mark.cluster)
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session", params=sorted(BROKERS))
def cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    if request.param == "rabbitmq" and not SERVER_BIN.exists():
        pytest.skip(f"no {SERVER_BIN} (docker/local-services.sh --for-tests installs RabbitMQ)")
    with Cluster(broker=BROKERS[request.param]()) as built:
        yield built


@pytest.fixture
def fresh(cluster: Cluster) -> Cluster:
    """Every engine back to a short answer with no fault."""
    for gpu in cluster.gpus:
        gpu.configure(token_delay_s=0.0, first_token_delay_s=0.0, default_tokens=8, fault=None)
    return cluster

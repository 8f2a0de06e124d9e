"""A real, unmodified python-novaclient gets a gateway link through the Nova route."""

from __future__ import annotations

import asyncio

import novaclient
import redis.asyncio as aioredis
from keystoneauth1 import session as ks_session
from keystoneauth1.token_endpoint import Token
from novaclient import api_versions
from novaclient import client as nova_client

from gateway.simulator.state import ComputeSimulator
from tests.conftest import GatewayFactory
from tests.support import PROJECT, SERVER, mint_jwt


def _console_url_with_novaclient(endpoint: str, token: str, version: str) -> str:
    auth = Token(endpoint=endpoint, token=token)
    sess = ks_session.Session(auth=auth)
    if version == "2.latest":
        # What `nova --os-compute-api-version 2.latest` does: read the version document first.
        probe = nova_client.Client("2.1", session=sess, endpoint_override=endpoint)
        discovered = api_versions.discover_version(probe, api_versions.APIVersion("2.latest"))
        version = discovered.get_string()
        # The gateway advertises 2.96, so the client settles on min(its maximum, 2.96).
        assert (
            version == min(novaclient.API_MAX_VERSION, api_versions.APIVersion("2.96")).get_string()
        )
    nova = nova_client.Client(version, session=sess, endpoint_override=endpoint)
    answer = nova.servers.get_console_url(SERVER, "novnc")
    return str(answer["remote_console"]["url"])


async def test_novaclient_gets_gateway_link(
    make_gateway: GatewayFactory, fake_redis: aioredis.Redis, simulator: ComputeSimulator
) -> None:
    client = await make_gateway(fake_redis)
    endpoint = str(client.make_url(f"/v2.1/{PROJECT}"))
    for version in ("2.6", "2.79", "2.latest"):
        url = await asyncio.to_thread(_console_url_with_novaclient, endpoint, mint_jwt(), version)
        assert url.startswith("https://gw.example.com/console/")
    assert simulator.console_calls == 1

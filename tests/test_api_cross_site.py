"""The API is for the CLI and tools, never for a web page. With basic auth configured, a
browser that once opened an API link (the emails' "Incident" link goes to
/api/v1/incidents/N) keeps the credentials and attaches them by itself to any later request
to that origin, also to a form another site's page submits: such a request (it carries
``Origin`` or ``Sec-Fetch-Site``) must not act."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

from tests.conftest import AUTH, TOKEN, ClientFactory
from tests.test_escalation_story import alert, incident, post, webhook

Client = TestClient[Any, Any]

BASIC = {"Authorization": "Basic " + base64.b64encode(b"oncall:hunter2-pass").decode()}
RULES = Path(__file__).parent.parent / "rules"
# What a page on another site sends when it submits a form to the API
# (<form method=post enctype=text/plain>, the field's name and value making a JSON object).
CROSS_SITE = {
    "Origin": "https://runbooks.attacker.example",
    "Sec-Fetch-Site": "cross-site",
    "Sec-Fetch-Mode": "navigate",
    "Content-Type": "text/plain",
}


async def basic_daemon(make_client: ClientFactory, tmp_path: Path) -> Client:
    (tmp_path / "token").write_text(TOKEN + "\n")
    (tmp_path / "basic-password").write_text("hunter2-pass\n")
    config = tmp_path / "config.yaml"
    config.write_text(
        "auth:\n"
        "  bearer_token_file: token\n"
        "  basic_auth:\n"
        "    username: oncall\n"
        "    password_file: basic-password\n"
        f"classification:\n  rule_files: ['{RULES}/*.yaml']\n"
    )
    return await make_client(config)


async def test_a_cross_site_form_with_the_browsers_basic_credentials_does_not_act(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    client = await basic_daemon(make_client, tmp_path)
    await post(client, webhook(alert("TargetDown", instance="web-1:9100")))
    assert (await incident(client))["state"] == "triggered"
    body = '{"by": "x", "pad": "=1"}'  # name '{"by": "x", "pad": "', value '1"}'
    resolved = await client.post(
        "/api/v1/incidents/1/resolve", data=body, headers={**BASIC, **CROSS_SITE}
    )
    assert resolved.status == 403, await resolved.text()
    assert (await incident(client))["state"] == "triggered"
    # Without a body at all (fetch(url, {method: "POST", mode: "no-cors"})): only Origin.
    paused = await client.post(
        "/api/v1/actions/pause", headers={**BASIC, "Origin": CROSS_SITE["Origin"]}
    )
    assert paused.status == 403, await paused.text()
    reload = await client.post("/-/reload", headers={**BASIC, "Sec-Fetch-Site": "same-site"})
    assert reload.status == 403, await reload.text()
    # The CLI, curl and Alertmanager send neither header: they act as before, with either
    # scheme, and a browser may still read (a cross-site page cannot read the answer).
    acked = await client.post(
        "/api/v1/incidents/1/acknowledge", json={"by": "alice"}, headers=BASIC
    )
    assert acked.status == 200, await acked.text()
    looked = await client.get("/api/v1/incidents/1", headers={**BASIC, **CROSS_SITE})
    assert looked.status == 200
    done = await client.post("/api/v1/incidents/1/resolve", json={"by": "alice"}, headers=AUTH)
    assert done.status == 200
    assert (await incident(client))["state"] == "resolved"


# The doors that anyone may reach: Alertmanager's webhook, Twilio's (signed), email links.
PUBLIC_DOORS = frozenset(
    {
        "/api/v1/alertmanager",
        "/api/v1/twilio/status",
        "/api/v1/twilio/sms",
        "/api/v1/twilio/voice",
        "/ack/{token}",
    }
)


async def test_every_route_that_acts_needs_credentials_and_refuses_other_sites(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    """Each POST or DELETE of the API, those added since included (actions lift, lifted):
    without credentials 401, with the browser's credentials from another site's page 403.
    Nothing acts: the refusals come before the handler reads its body."""
    client = await basic_daemon(make_client, tmp_path)
    acting = [
        (route.method, route.resource.canonical)
        for route in client.app.router.routes()
        if route.method not in ("GET", "HEAD") and route.resource is not None
    ]
    checked = [(m, path) for m, path in acting if path not in PUBLIC_DOORS]
    assert ("POST", "/api/v1/actions/lifted") in checked
    for method, path in checked:
        url = path.replace("{id}", "1").replace("{action}", "resolve")
        url = url.replace("{fingerprint}", "0" * 16)
        anonymous = await client.request(method, url, data="{}")
        assert anonymous.status == 401, (method, path)
        cross_site = await client.request(method, url, data="{}", headers={**BASIC, **CROSS_SITE})
        assert cross_site.status == 403, (method, path)

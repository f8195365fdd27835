"""The SSRF guard: webhook URLs that resolve to loopback, private, link-local... addresses are refused at submit
and again at delivery, unless INFERNO_WEBHOOK_ALLOWED_NETWORKS allows them."""

from __future__ import annotations

import socket

import pytest

from inferno_jobs.delivery import DeliveryLog
from inferno_jobs.job import JobStatus
from inferno_jobs.ssrf import NetworkGuard, WebhookHostUnresolved, WebhookUrlRefused, guarded_session
from tests.unit.test_webhooks import IRIS, RESULT, SECRET, deliverer, queued_events, receiver, svc  # noqa: F401

REAL_GETADDRINFO = socket.getaddrinfo


def resolving_to(*addresses):
    """A getaddrinfo that resolves every name except real IP literals to ``addresses``."""
    def fake(host, port, *args, **kwargs):
        if host in ("localhost", "127.0.0.1"):
            return REAL_GETADDRINFO(host, port, *args, **kwargs)
        out = []
        for address in addresses:
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            sockaddr = (address, port, 0, 0) if family == socket.AF_INET6 else (address, port)
            out.append((family, socket.SOCK_STREAM, 6, "", sockaddr))
        return out
    return fake


@pytest.fixture
def dns(monkeypatch):
    """Make every name (other than localhost) resolve to the given addresses."""
    def set_(*addresses):
        monkeypatch.setattr(socket, "getaddrinfo", resolving_to(*addresses))
    return set_


@pytest.mark.parametrize("address, kind", [
    ("127.0.0.1", "loopback"),
    ("10.1.2.3", "private"),
    ("192.168.0.10", "private"),
    ("172.16.5.4", "private"),
    ("169.254.169.254", "link-local"),
    ("::1", "loopback"),
    ("::ffff:127.0.0.1", "loopback"),
    ("::ffff:10.0.0.1", "private"),
    ("fe80::1", "link-local"),
    ("fd00::1", "private"),
    ("0.0.0.0", "unspecified"),
    ("224.0.0.1", "multicast"),
    ("240.0.0.1", "reserved"),
    ("100.64.0.1", ""),
    ("2002:a9fe:a9fe::", "link-local"),  # 6to4 of 169.254.169.254: a relay delivers it there
    ("2002:7f00:1::", "loopback"),
])
def test_names_resolving_to_internal_addresses_are_refused(dns, address, kind):
    dns(address)
    with pytest.raises(WebhookUrlRefused) as refused:
        NetworkGuard().check_url("https://hooks.example.com/x")
    assert kind in refused.value.message and "webhook.url" in refused.value.message


def test_every_address_of_a_name_is_checked(dns):
    dns("93.184.216.34", "10.0.0.7")
    with pytest.raises(WebhookUrlRefused):
        NetworkGuard().check_url("https://hooks.example.com/x")


def test_public_addresses_pass(dns):
    dns("93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946", "::ffff:93.184.216.34")
    assert len(NetworkGuard().check_url("https://hooks.example.com/x")) == 3


def test_localhost_by_name_and_literal_addresses_are_refused():
    for url in ("http://localhost:8080/hook", "http://127.0.0.1/hook", "http://[::1]/hook",
                "http://[::ffff:127.0.0.1]/hook", "http://169.254.169.254/latest/meta-data/", "http://10.0.0.1/"):
        with pytest.raises(WebhookUrlRefused):
            NetworkGuard().check_url(url)


def test_allowed_networks_let_chosen_addresses_through(dns):
    guard = NetworkGuard(["127.0.0.0/8", "10.20.0.0/16"])
    assert [str(a) for a in guard.check_url("http://127.0.0.1:9000/hook")] == ["127.0.0.1"]
    assert guard.refusal(__import__("ipaddress").ip_address("::ffff:127.0.0.1")) is None  # via the mapped v4
    dns("10.20.3.4")
    assert guard.check_url("http://hooks.internal/x")
    dns("10.21.3.4")
    with pytest.raises(WebhookUrlRefused):
        guard.check_url("http://hooks.internal/x")


def test_only_http_and_unresolvable_names_are_refused(dns, monkeypatch):
    with pytest.raises(WebhookUrlRefused):
        NetworkGuard().check_url("ftp://example.com/x")

    def nxdomain(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    monkeypatch.setattr(socket, "getaddrinfo", nxdomain)
    with pytest.raises(WebhookHostUnresolved):
        NetworkGuard().check_url("https://no-such-host.invalid/x")


@pytest.mark.parametrize("url, dns_answer, field", [
    ("http://localhost/hook", None, "webhook_url"),
    ("http://hooks.example.com/hook", "127.0.0.1", "webhook_url"),
    ("http://hooks.example.com/hook", "10.0.0.5", "webhook_url"),
    ("http://169.254.169.254/latest/meta-data/", None, "webhook_url"),
    ("http://[::1]/hook", None, "webhook_url"),
    ("http://[::ffff:127.0.0.1]/hook", None, "webhook_url"),
    ("http://hooks.example.com/hook", "::ffff:127.0.0.1", "webhook_url"),
])
def test_submit_refuses_internal_webhook_urls_naming_the_field(client, celery_stub, dns, url, dns_answer, field):
    if dns_answer:
        dns(dns_answer)
    r = client.post("/jobs", json={**IRIS, "webhook_url": url})
    assert r.status_code == 400, r.get_json()
    error = r.get_json()["error"]
    assert error["code"] == "INVALID_REQUEST" and field in error["message"]
    assert celery_stub.sent == []
    r = client.post("/jobs", json={**IRIS, "webhook": {"url": url}})
    assert r.status_code == 400 and "webhook" in r.get_json()["error"]["message"]
    # the guard's refusal (naming the address), not a URL check's: every IPv6 literal is a valid URL
    assert error["details"]["field"] == field and "Not a valid URL" not in error["message"]
    assert r.get_json()["error"]["details"]["field"] == "webhook.url"


def test_submit_refuses_a_name_that_does_not_resolve(client, monkeypatch):
    def nxdomain(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    monkeypatch.setattr(socket, "getaddrinfo", nxdomain)
    r = client.post("/jobs", json={**IRIS, "webhook_url": "https://no-such-host.invalid/hook"})
    assert r.status_code == 400 and "does not resolve" in r.get_json()["error"]["message"]


def test_submit_accepts_an_allowed_network(make_app, dns):
    app = make_app(webhook_allowed_networks=("127.0.0.0/8",))
    assert app.test_client().post("/jobs", json={**IRIS, "webhook_url": "http://127.0.0.1:9/hook"}).status_code == 202
    # an IPv4-mapped literal counts as the IPv4 address inside it
    mapped = app.test_client().post("/jobs", json={**IRIS, "webhook": {"url": "http://[::ffff:127.0.0.1]:9/hook"}})
    assert mapped.status_code == 202, mapped.get_json()
    for broken in ("http://[::ffff:127.0.0.1/hook", "http://[zz::1]/hook", "ftp://[::1]/hook"):
        r = app.test_client().post("/jobs", json={**IRIS, "webhook_url": broken})
        assert r.status_code == 400 and "Not a valid URL" in str(r.get_json()["error"]["details"]), broken
    dns("93.184.216.34")
    assert app.test_client().post("/jobs", json={**IRIS, "webhook_url": "https://hooks.example.com/"}).status_code \
        == 202


def test_delivery_checks_again_and_records_a_refusal_without_retry(make_app, celery_stub, receiver):
    rx = receiver()
    # Allowed when the job was submitted; the operator has since removed the allowance.
    app = make_app(webhook_secret=SECRET, webhook_allowed_networks=("127.0.0.0/8",))
    job_id = app.test_client().post("/jobs", json={**IRIS, "webhook_url": rx.url}).get_json()["id"]
    store = svc(app).store
    store.claim(job_id, "w:1")
    store.finish(job_id, JobStatus.SUCCEEDED, result=RESULT)
    [event] = queued_events(app, celery_stub)
    outcome = deliverer(app, guard=NetworkGuard()).deliver(event)
    assert outcome.status == "failed" and outcome.retry_in_s is None
    assert rx.requests == []
    [entry] = DeliveryLog(svc(app).redis, store.keys).list(job_id)
    assert entry["outcome"] == "failed" and "loopback" in entry["error"] and entry["status_code"] is None


def test_the_delivery_connection_goes_only_to_vetted_addresses(receiver, monkeypatch):
    """DNS rebinding: a name that resolved to a public address at submit resolves to 127.0.0.1 at delivery."""
    rx = receiver()
    monkeypatch.setattr(socket, "getaddrinfo", resolving_to("127.0.0.1"))
    with pytest.raises(WebhookUrlRefused):
        guarded_session(NetworkGuard()).post(f"http://rebind.example.com:{rx.port}/hook", data=b"{}", timeout=2)
    assert rx.requests == []
    response = guarded_session(NetworkGuard(["127.0.0.0/8"])).post(
        f"http://rebind.example.com:{rx.port}/hook", data=b"{}", timeout=2)
    assert response.status_code == 401 and len(rx.requests) == 1  # reached (and unsigned, so refused there)

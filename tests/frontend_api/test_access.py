"""API keys and CORS on the real front app (falcon.testing), with the in-process fan-out."""

from __future__ import annotations

import hmac
from pathlib import Path
from typing import Any

import falcon
import falcon.testing
import pytest

from fanout.layout import LAYOUT_ENV, Layout, load_layout
from frontend_api import access
from frontend_api.access import API_KEYS_ENV, ApiKeyError, ApiKeys, read_api_keys
from frontend_api.app import create_app, get_app
from frontend_api.forwarded import LOOPBACK, client_address
from tests.conftest import LayoutFactory
from tests.frontend_api.test_resources import EchoFanout

KEY = "k3y-Alpha_0123456789"
OTHER = "second.key~xyz"
ALLOWED = "https://editor.example"
PREFLIGHT = {"Origin": ALLOWED, "Access-Control-Request-Method": "POST",
             "Access-Control-Request-Headers": "content-type, authorization"}


def make_layout(write_layout: LayoutFactory, **front: Any) -> Layout:
    return load_layout(write_layout(front=front))


def client(layout: Layout, keys: ApiKeys | None = None) -> falcon.testing.TestClient:
    return falcon.testing.TestClient(create_app(layout, EchoFanout(), keys))


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def autocomplete(app: falcon.testing.TestClient,
                 headers: dict[str, str] | None = None) -> falcon.testing.Result:
    return app.simulate_post("/autocomplete", json={"context": "abc", "n_samples": 2},
                             headers=headers)


def assert_refused(result: falcon.testing.Result) -> None:
    assert result.status_code == 401
    assert result.headers["WWW-Authenticate"].startswith("Bearer")
    assert result.json["title"] == "Unauthorized" and result.json["description"]


@pytest.fixture
def keyed(write_layout: LayoutFactory) -> falcon.testing.TestClient:
    return client(make_layout(write_layout), read_api_keys(f"{KEY}, {OTHER}", None))


# ---- reading the keys -------------------------------------------------------------


def test_no_keys_configured_leaves_every_route_open(write_layout: LayoutFactory) -> None:
    keys = read_api_keys(None, None)
    app = client(make_layout(write_layout), keys)
    assert not keys and read_api_keys("  ", None) == ApiKeys()
    assert autocomplete(app).status_code == 200
    assert app.simulate_get("/models").status_code == 200


def test_keys_from_the_file_skip_blank_lines_and_comments(write_layout: LayoutFactory,
                                                          tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.txt"
    keys_file.write_text(f"# editors\n\n  {KEY}  \n#{OTHER}\n")
    layout = make_layout(write_layout, api_keys_file=str(keys_file))
    keys = read_api_keys(None, layout.front.api_keys_file)
    app = client(layout, keys)

    assert len(keys.digests) == 1 and keys.sources == (str(keys_file),)
    assert autocomplete(app, bearer(KEY)).status_code == 200
    assert_refused(autocomplete(app, bearer(OTHER)))  # commented out
    assert_refused(autocomplete(app, bearer("# editors")))


def test_keys_from_the_environment_and_the_file_both_count(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.txt"
    keys_file.write_text(f"{OTHER}\n")
    keys = read_api_keys(f"{KEY},,", keys_file)
    assert keys.accepts(KEY) and keys.accepts(OTHER) and not keys.accepts("")
    assert keys.sources == (f"${API_KEYS_ENV}", str(keys_file))


@pytest.mark.parametrize(("text", "where", "secret"), [
    ("# only a comment\n\n", "names no API key", None),
    (f"{KEY}  # the editors' key\n", "keys.txt:1", KEY),
    ("ok-key\nwith space\n", "keys.txt:2", "with space"),
])
def test_a_bad_keys_file_stops_the_start_without_showing_a_key(
        tmp_path: Path, text: str, where: str, secret: str | None) -> None:
    keys_file = tmp_path / "keys.txt"
    keys_file.write_text(text)
    with pytest.raises(ApiKeyError, match=where) as error:
        read_api_keys(None, keys_file)
    assert secret is None or secret not in str(error.value)


def test_a_key_a_header_cannot_carry_is_refused_at_start_up() -> None:
    with pytest.raises(ApiKeyError, match=rf"\${API_KEYS_ENV} item 2"):
        read_api_keys(f"{KEY},clé", None)


def test_get_app_reads_the_keys_from_the_environment(write_layout: LayoutFactory,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(LAYOUT_ENV, str(write_layout()))
    monkeypatch.setenv(API_KEYS_ENV, KEY)
    app = falcon.testing.TestClient(get_app())
    assert_refused(app.simulate_get("/models"))
    assert app.simulate_get("/models", headers=bearer(KEY)).status_code == 200


# ---- requests with and without a key ---------------------------------------------


@pytest.mark.parametrize("key", [KEY, OTHER])
def test_any_configured_key_opens_the_api(keyed: falcon.testing.TestClient, key: str) -> None:
    assert autocomplete(keyed, bearer(key)).status_code == 200
    assert keyed.simulate_get("/models", headers=bearer(key)).status_code == 200
    assert autocomplete(keyed, {"Authorization": f"bearer {key}"}).status_code == 200


@pytest.mark.parametrize("headers", [
    {},
    bearer("wrong"),
    bearer(KEY[:-1]),          # a prefix of a real key
    bearer(KEY + "0"),         # a real key with more after it
    bearer(KEY.upper()),
    {"Authorization": KEY},    # no scheme
    {"Authorization": "Bearer"},
    {"Authorization": "Bearer   "},
    {"Authorization": f"Basic {KEY}"},
    {"Authorization": f"Token {KEY}"},
], ids=["missing", "wrong", "prefix", "longer", "case", "no-scheme", "no-key", "blank-key",
        "basic", "token"])
def test_a_missing_wrong_or_malformed_key_is_401(keyed: falcon.testing.TestClient,
                                                 headers: dict[str, str]) -> None:
    result = autocomplete(keyed, headers)
    assert_refused(result)
    assert KEY not in result.text and OTHER not in result.text
    assert_refused(keyed.simulate_get("/models", headers=headers))


def test_the_fanout_never_sees_a_refused_request(write_layout: LayoutFactory) -> None:
    fanout = EchoFanout()
    app = falcon.testing.TestClient(create_app(make_layout(write_layout), fanout,
                                               read_api_keys(KEY, None)))
    assert_refused(autocomplete(app, bearer("nope")))
    assert fanout.seen == []


def test_missing_and_wrong_keys_get_the_rfc_6750_challenges(
        keyed: falcon.testing.TestClient) -> None:
    assert autocomplete(keyed).headers["WWW-Authenticate"] == 'Bearer realm="fanout"'
    assert autocomplete(keyed, bearer("nope")).headers["WWW-Authenticate"] == \
        'Bearer realm="fanout", error="invalid_token"'


@pytest.mark.parametrize("path", ["/", "/health", "/static/editor.js", "/static/editor.css",
                                  "/openapi.json", "/metrics"])
def test_the_editor_page_its_assets_health_the_api_description_and_metrics_stay_open(
        keyed: falcon.testing.TestClient, path: str) -> None:
    assert keyed.simulate_get(path).status_code == 200


def test_a_path_that_only_looks_open_still_needs_a_key(
        keyed: falcon.testing.TestClient) -> None:
    assert_refused(keyed.simulate_get("/healthz"))
    assert_refused(keyed.simulate_get("/health/x"))
    assert_refused(keyed.simulate_get("/staticky"))


def test_every_key_is_compared_in_constant_time_with_no_early_exit(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # A counting wrapper around the real compare_digest: matching the first of three keys
    # must still compare against all three, and only ever through compare_digest.
    calls: list[tuple[int, int]] = []
    compare_digest = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append((len(a), len(b)))
        return compare_digest(a, b)

    keys = read_api_keys(f"{KEY},{OTHER},third-key", None)
    monkeypatch.setattr(access.hmac, "compare_digest", counting)
    assert keys.accepts(KEY)
    assert not keys.accepts(KEY[:4])
    assert len(calls) == 6
    assert set(calls) == {(32, 32)}  # digests: lengths say nothing


# ---- CORS -------------------------------------------------------------------------


@pytest.fixture
def cors(write_layout: LayoutFactory) -> falcon.testing.TestClient:
    return client(make_layout(write_layout, cors_origins=[ALLOWED]), read_api_keys(KEY, None))


def test_an_allowed_origin_is_let_in_and_sees_retry_after(
        cors: falcon.testing.TestClient) -> None:
    result = autocomplete(cors, {"Origin": ALLOWED, **bearer(KEY)})
    assert result.status_code == 200
    assert result.headers["Access-Control-Allow-Origin"] == ALLOWED
    assert "Retry-After" in result.headers["Access-Control-Expose-Headers"]
    assert "Origin" in result.headers["Vary"]
    assert "Access-Control-Allow-Credentials" not in result.headers


def test_a_401_reaches_an_allowed_origin_readable(cors: falcon.testing.TestClient) -> None:
    result = autocomplete(cors, {"Origin": ALLOWED})
    assert_refused(result)
    assert result.headers["Access-Control-Allow-Origin"] == ALLOWED


def test_another_origin_gets_no_cors_headers(cors: falcon.testing.TestClient) -> None:
    for origin in ["https://evil.example", "https://editor.example.evil", "null"]:
        result = autocomplete(cors, {"Origin": origin, **bearer(KEY)})
        assert not [h for h in result.headers if h.lower().startswith("access-control-")]
        preflight = cors.simulate_options("/autocomplete", headers={**PREFLIGHT,
                                                                    "Origin": origin})
        assert "Access-Control-Allow-Origin" not in preflight.headers


def test_a_preflight_from_an_allowed_origin_needs_no_key(
        cors: falcon.testing.TestClient) -> None:
    result = cors.simulate_options("/autocomplete", headers=PREFLIGHT)
    assert result.status_code == 200
    assert result.headers["Access-Control-Allow-Origin"] == ALLOWED
    assert "POST" in result.headers["Access-Control-Allow-Methods"]
    allowed = {h.strip().lower() for h in result.headers["Access-Control-Allow-Headers"].split(",")}
    assert {"content-type", "authorization"} <= allowed


def test_an_options_request_that_is_no_preflight_needs_a_key(
        cors: falcon.testing.TestClient) -> None:
    assert_refused(cors.simulate_options("/autocomplete", headers={"Origin": ALLOWED}))


def test_without_origins_configured_no_cors_headers_at_all(write_layout: LayoutFactory) -> None:
    app = client(make_layout(write_layout))
    result = autocomplete(app, {"Origin": ALLOWED})
    assert result.status_code == 200
    assert not [h for h in result.headers if h.lower().startswith("access-control-")]
    preflight = app.simulate_options("/autocomplete", headers=PREFLIGHT)
    assert "Access-Control-Allow-Origin" not in preflight.headers


def test_a_wildcard_origin_allows_any_origin(write_layout: LayoutFactory) -> None:
    app = client(make_layout(write_layout, cors_origins=["*"]))
    result = autocomplete(app, {"Origin": "https://anywhere.example"})
    assert result.headers["Access-Control-Allow-Origin"] == "*"


def test_the_client_address_is_forwarded_only_by_the_edge() -> None:
    def seen(peer: str, forwarded: str | None, trusted: frozenset[str]) -> str:
        headers = {"X-Forwarded-For": forwarded} if forwarded else {}
        req = falcon.testing.create_req(remote_addr=peer, headers=headers)
        return client_address(req, trusted)

    edge = frozenset(LOOPBACK)
    assert seen("127.0.0.1", "203.0.113.7", edge) == "203.0.113.7"
    assert seen("127.0.0.1", "10.9.9.9, 203.0.113.7", edge) == "203.0.113.7"
    assert seen("127.0.0.1", None, edge) == "127.0.0.1"
    # Anyone else's header is their own word: ignored.
    assert seen("198.51.100.2", "203.0.113.7", edge) == "198.51.100.2"
    assert seen("127.0.0.1", "203.0.113.7", frozenset()) == "127.0.0.1"

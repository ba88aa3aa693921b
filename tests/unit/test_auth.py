"""API keys without a cluster: the secret's format, the Authorization value, loopback-only listening."""

import pytest

from llmserve.common import api_keys
from llmserve.common.auth import bearer_secret
from llmserve.common.config import CommonSettings, is_loopback_address, refuse_insecure_listen
from llmserve.common.errors import ServiceError

pytestmark = pytest.mark.unit


def test_a_new_secret_has_its_id_inside_and_only_its_hash_matches():
    secret = api_keys.new_secret()
    key_id = api_keys.key_id_of(secret)
    assert key_id is not None and secret.startswith(f"lsk_{key_id}_") and len(secret) == 4 + 12 + 1 + 43
    stored = api_keys.secret_hash(secret)
    assert secret not in stored and api_keys.matches(secret, stored)
    assert not api_keys.matches(api_keys.new_secret(), stored)
    assert api_keys.new_secret() != secret


@pytest.mark.parametrize("value", [None, "", "Bearer", "Bearer   ", "Basic abc", "bearer" + "x" * 300, "Token lsk_x"])
def test_malformed_authorization_values_are_unauthenticated_without_echoing_them(value):
    with pytest.raises(ServiceError) as err:
        bearer_secret(value)
    assert err.value.http_status == 401
    given = (value or "").partition(" ")[2].strip() or (value if value and len(value) > 20 else "")
    if given:
        assert given not in err.value.message


def test_the_bearer_scheme_is_case_insensitive_and_ids_of_non_keys_are_none():
    assert bearer_secret("bearer abc") == "abc"
    assert api_keys.key_id_of("sk-openai-style") is None
    assert api_keys.key_id_of("lsk_0123456789ab_" + "é" * 43) is None


@pytest.mark.parametrize(
    "addr, loopback",
    [("127.0.0.1:8000", True), ("localhost:8000", True), ("[::1]:50051", True), ("127.8.9.1:1", True),
     ("0.0.0.0:8000", False), ("[::]:50051", False), ("10.0.0.5:8000", False), ("router.internal:8000", False)],
)
def test_loopback_addresses(addr, loopback):
    assert is_loopback_address(addr) is loopback


def test_listening_beyond_loopback_needs_auth_or_an_explicit_opt_in():
    with pytest.raises(SystemExit, match="LLMSERVE_ALLOW_INSECURE=1"):
        refuse_insecure_listen(CommonSettings(), "router", "127.0.0.1:50051", "0.0.0.0:8000")
    refuse_insecure_listen(CommonSettings(), "router", "127.0.0.1:50051")
    refuse_insecure_listen(CommonSettings(auth="required"), "router", "0.0.0.0:8000")
    refuse_insecure_listen(CommonSettings(allow_insecure=True), "router", "0.0.0.0:8000")
    with pytest.raises(ValueError, match="LLMSERVE_AUTH"):
        CommonSettings.from_env({"LLMSERVE_AUTH": "maybe"})

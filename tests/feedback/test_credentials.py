"""The API's credential on a feedback record: signed, bound to the record, unforgeable by other producers;
and an origin that names cannot multiply."""

from __future__ import annotations

from online.credentials import UNSIGNED, Credential, Signer, signing_secret
from online.keys import Keys

VALUE = b'{"kind":"label","text":"hi","label":"a","source":"x"}'


def test_a_signed_credential_verifies_and_says_who_and_whether_trusted():
    signer = Signer(b"secret")
    for level, origin in (("admin", "admin"), ("key", "key:alice"), ("", "addr:10.0.0.7")):
        got = signer.verify(signer.headers(Credential(level, "10.0.0.7"), VALUE), VALUE)
        assert got.signed and got.level == level and got.origin("alice") == origin
    admin = signer.verify(signer.headers(Credential("admin"), VALUE), VALUE)
    key = signer.verify(signer.headers(Credential("key"), VALUE), VALUE)
    anonymous = signer.verify(signer.headers(Credential("", "10.0.0.7"), VALUE), VALUE)
    assert admin.trusted("anyone", set())
    assert key.trusted("support", {"support"}) and not key.trusted("alice", {"support"})
    assert not anonymous.trusted("support", {"support"})  # a trusted name without its key earns nothing


def test_forged_moved_or_missing_credentials_are_one_unsigned_origin():
    signer = Signer(b"secret")
    headers = signer.headers(Credential("admin"), VALUE)
    assert not signer.verify(headers, VALUE.replace(b"hi", b"ho")).signed  # moved onto another record
    assert not Signer(b"guess").verify(headers, VALUE).signed  # another producer's key
    forged = [("online-credential", b'{"level": "admin", "address": ""}'), ("online-sig", b"0" * 64)]
    assert not signer.verify(forged, VALUE).signed
    unsigned = signer.verify(None, VALUE)
    assert unsigned.origin("ann") == unsigned.origin("ben") == UNSIGNED and not unsigned.trusted("ann", {"ann"})


def test_the_stacks_secret_is_made_once_and_shared(settings):
    from online.wiring.stores import Stores

    r, keys = Stores.from_settings(settings).redis, Keys(settings.key_prefix)
    first = signing_secret(None, r, keys.signing_secret)
    assert signing_secret(None, r, keys.signing_secret) == first and len(first) == 64
    assert signing_secret("configured", r, keys.signing_secret) == b"configured"

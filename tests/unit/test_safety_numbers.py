"""Safety numbers (ping_web/core/safety.py) and link codes and messages (ping_web/core/linking.py)."""

from __future__ import annotations

import hashlib

import pytest

from ping_web.core.ids import DeviceId, UserId
from ping_web.core.linking import LinkAnswer, LinkCode, LinkRequest
from ping_web.core.safety import ITERATIONS, SafetyNumber, digits, user_fingerprint
from ping_web.errors import InvalidInput, LinkFailed

ANN, BOB = (UserId(b"ann"), b"\x01" * 32), (UserId(b"bob"), b"\x02" * 32)


def test_the_fingerprint_is_signals_construction() -> None:
    user, root = ANN
    digest = hashlib.sha512(b"\x00\x00" + root + user.raw + root).digest()
    for _ in range(ITERATIONS - 1):
        digest = hashlib.sha512(digest + root).digest()
    assert user_fingerprint(user, root) == digest
    assert digits(bytes(range(30))) == "".join(
        f"{int.from_bytes(bytes(range(i, i + 5)), 'big') % 100000:05d}" for i in range(0, 30, 5)
    )


def test_both_sides_see_the_same_digits_and_match_each_others_qr() -> None:
    mine, theirs = SafetyNumber.of(ANN, BOB), SafetyNumber.of(BOB, ANN)
    assert mine.digits == theirs.digits and len(mine.digits) == 60 and mine.digits.isdigit()
    assert len(mine.groups) == 12 and str(mine).count(" ") == 11
    assert mine.matches(theirs.qr) and theirs.matches(mine.qr)
    assert not mine.matches(mine.qr)  # my own payload is not the other side's
    other = SafetyNumber.of(ANN, (UserId(b"bob"), b"\x03" * 32))  # bob with another identity
    assert other.digits != mine.digits and not other.matches(theirs.qr)
    with pytest.raises(InvalidInput):
        mine.matches(b"short")
    with pytest.raises(InvalidInput):
        mine.matches(b"\x02" + theirs.qr[1:])


def test_link_codes_read_back_as_people_type_them() -> None:
    code = LinkCode.new()
    text = str(code)
    assert len(text) == 19 and text.count("-") == 3
    assert LinkCode.parse(text) == code
    assert LinkCode.parse(text.lower().replace("-", " ")) == code
    assert LinkCode.parse(text.replace("0", "o").replace("1", "l")) == code
    assert "secret" not in repr(code) and code.secret.hex() not in repr(code)
    for bad in ["", "ABCD", "ABCD-EFGH-JKMN-PQRU", "ABCD-EFGH-JKMN-PQRST", 7]:
        with pytest.raises(InvalidInput):
            LinkCode.parse(bad)  # type: ignore[arg-type]
    assert len(code.link_id) == 16 and code.link_id != LinkCode.new().link_id


def test_link_messages_open_only_with_their_code() -> None:
    code = LinkCode.new()
    request = LinkRequest(UserId(b"ann"), DeviceId.new(), b"\x05" * 32, "Laptop", b"\x06" * 64, (b"kp1", b"kp2"))
    sealed = request.seal(code)
    assert LinkRequest.open(sealed, code) == request
    with pytest.raises(LinkFailed, match="not made with this link code"):
        LinkRequest.open(sealed, LinkCode.new())
    tampered = bytearray(sealed)
    tampered[20] ^= 1
    with pytest.raises(LinkFailed):
        LinkRequest.open(bytes(tampered), code)
    with pytest.raises(LinkFailed):
        LinkRequest.open(b"\xa0", code)
    answer = LinkAnswer(b"\x07" * 32, 3, b"\x08" * 32)
    assert LinkAnswer.open(answer.seal(code), code) == answer
    with pytest.raises(LinkFailed):  # a request is not an answer, even under the same code
        LinkAnswer.open(sealed, code)

"""Ed25519ph signature verification (RFC 8032, section 5.1), which cryptography does not offer.

cosign 2.6 and later sign with Ed25519 keys in the pre-hashed variant (the message is SHA-512
hashed first and the signature is domain-separated from plain Ed25519), so a verifier that only
knows plain Ed25519 rejects their signatures. Only verification lives here: it handles no secret,
so constant time does not matter. The check is the cofactorless one and compares encodings
(``encode([S]B - [k]A) == R``), as Go's crypto/ed25519 does, which is what cosign verifies with.
"""

from __future__ import annotations

import hashlib
from typing import Final

_P: Final = 2**255 - 19
_L: Final = 2**252 + 27742317777372353535851937790883648493
_D: Final = (-121665 * pow(121666, _P - 2, _P)) % _P
_SQRT_M1: Final = pow(2, (_P - 1) // 4, _P)

# dom2(phflag=1, context="") of RFC 8032 section 2.
_DOM2_PH: Final = b"SigEd25519 no Ed25519 collisions" + bytes([1, 0])

_Point = tuple[int, int, int, int]  # extended coordinates (X, Y, Z, T), x = X/Z, y = Y/Z


def _add(p: _Point, q: _Point) -> _Point:
    # RFC 8032 5.1.4; the formula is complete, so it also doubles.
    x1, y1, z1, t1 = p
    x2, y2, z2, t2 = q
    a = (y1 - x1) * (y2 - x2) % _P
    b = (y1 + x1) * (y2 + x2) % _P
    c = t1 * 2 * _D * t2 % _P
    d = z1 * 2 * z2 % _P
    e, f, g, h = b - a, d - c, d + c, b + a
    return (e * f % _P, g * h % _P, f * g % _P, e * h % _P)


def _multiply(scalar: int, point: _Point) -> _Point:
    result: _Point = (0, 1, 1, 0)
    addend = point
    while scalar:
        if scalar & 1:
            result = _add(result, addend)
        addend = _add(addend, addend)
        scalar >>= 1
    return result


def _negate(point: _Point) -> _Point:
    x, y, z, t = point
    return ((-x) % _P, y, z, (-t) % _P)


def _recover_x(y: int, sign: int) -> int | None:
    if y >= _P:
        return None
    u = (y * y - 1) % _P
    v = (_D * y * y + 1) % _P
    x = u * pow(v, 3, _P) * pow(u * pow(v, 7, _P), (_P - 5) // 8, _P) % _P
    vx2 = v * x * x % _P
    if vx2 == u:
        pass
    elif vx2 == (-u) % _P:
        x = x * _SQRT_M1 % _P
    else:
        return None
    if x == 0 and sign:
        return None
    if x & 1 != sign:
        x = _P - x
    return x


def _decode(encoded: bytes) -> _Point | None:
    if len(encoded) != 32:
        return None
    value = int.from_bytes(encoded, "little")
    sign = value >> 255
    y = value & ((1 << 255) - 1)
    x = _recover_x(y, sign)
    if x is None:
        return None
    return (x, y, 1, x * y % _P)


def _encode(point: _Point) -> bytes:
    x, y, z, _ = point
    z_inv = pow(z, _P - 2, _P)
    x = x * z_inv % _P
    y = y * z_inv % _P
    return (y | ((x & 1) << 255)).to_bytes(32, "little")


_BASE_Y: Final = 4 * pow(5, _P - 2, _P) % _P
_BASE: Final[_Point] = (
    _recover_x(_BASE_Y, 0) or 0,
    _BASE_Y,
    1,
    (_recover_x(_BASE_Y, 0) or 0) * _BASE_Y % _P,
)


def _base_powers() -> tuple[_Point, ...]:
    powers = [_BASE]
    for _ in range(252):
        powers.append(_add(powers[-1], powers[-1]))
    return tuple(powers)


# 2^i * B, so that [S]B needs additions only (S < L < 2^253).
_BASE_POWERS: Final = _base_powers()


def _multiply_base(scalar: int) -> _Point:
    result: _Point = (0, 1, 1, 0)
    for power in _BASE_POWERS:
        if scalar & 1:
            result = _add(result, power)
        scalar >>= 1
    return result


def verify_prehashed(public_key: bytes, signature: bytes, message: bytes) -> bool:
    """Whether ``signature`` is an Ed25519ph signature (empty context) of ``message``."""
    return _verify(public_key, signature, _DOM2_PH, hashlib.sha512(message).digest())


def verify_pure(public_key: bytes, signature: bytes, message: bytes) -> bool:
    """Plain Ed25519 through the same arithmetic (used to test it against another library)."""
    return _verify(public_key, signature, b"", message)


def _verify(public_key: bytes, signature: bytes, dom: bytes, message: bytes) -> bool:
    if len(signature) != 64:
        return False
    a = _decode(public_key)
    if a is None:
        return False
    r_bytes = signature[:32]
    s = int.from_bytes(signature[32:], "little")
    if s >= _L:
        return False
    k = int.from_bytes(hashlib.sha512(dom + r_bytes + public_key + message).digest(), "little")
    check = _add(_multiply_base(s), _negate(_multiply(k % _L, a)))
    return _encode(check) == r_bytes

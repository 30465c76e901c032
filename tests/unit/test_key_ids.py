import pytest

from trustd.formats.notary.key_ids import is_key_id


@pytest.mark.parametrize(
    ("text", "valid"),
    [
        ("0123456789abcdef" * 4, True),
        ("A" * 64, False),  # notary writes them lowercase; an uppercase pin would never match
        ("a" * 63, False),
        ("a" * 65, False),
        ("g" * 64, False),
        ("a" * 64 + "\n", False),
        ("", False),
    ],
)
def test_key_id_form(text: str, valid: bool) -> None:
    assert is_key_id(text) is valid

import pytest

from trustd.errors import InvalidReference
from trustd.names.reference import (
    Reference,
    looks_like_registry,
    parse_digest,
    parse_reference,
    parse_registry,
    parse_repository,
)

SHA256 = "sha256:" + "0123456789abcdef" * 4
SHA512 = "sha512:" + "0123456789abcdef" * 8


# (input, registry, path, tag, digest)
VALID = [
    ("nginx", "docker.io", "library/nginx", "latest", None),
    ("nginx:1.25", "docker.io", "library/nginx", "1.25", None),
    ("nginx:latest", "docker.io", "library/nginx", "latest", None),
    ("user/app", "docker.io", "user/app", "latest", None),
    ("user/app:v1", "docker.io", "user/app", "v1", None),
    ("docker.io/nginx", "docker.io", "library/nginx", "latest", None),
    ("docker.io/library/nginx:1.25", "docker.io", "library/nginx", "1.25", None),
    ("index.docker.io/nginx", "docker.io", "library/nginx", "latest", None),
    ("index.docker.io/user/app:v2", "docker.io", "user/app", "v2", None),
    ("localhost/x", "localhost", "x", "latest", None),
    ("localhost:5000/x:t", "localhost:5000", "x", "t", None),
    ("host:5000/a/b:tag", "host:5000", "a/b", "tag", None),
    (
        "registry.example.com/prod/team/app:1.0",
        "registry.example.com",
        "prod/team/app",
        "1.0",
        None,
    ),
    ("127.0.0.1:5000/app", "127.0.0.1:5000", "app", "latest", None),
    ("[::1]:5000/a", "[::1]:5000", "a", "latest", None),
    ("[fe80::1]/a:b", "[fe80::1]", "a", "b", None),
    ("quay.io/org/app", "quay.io", "org/app", "latest", None),
    (f"repo@{SHA256}", "docker.io", "library/repo", None, SHA256),
    (f"repo:tag@{SHA256}", "docker.io", "library/repo", "tag", SHA256),
    (f"host:5000/a@{SHA512}", "host:5000", "a", None, SHA512),
    # path separators: ".", "_", "__", runs of "-"
    ("a_b__c---d/e.f-g", "docker.io", "a_b__c---d/e.f-g", "latest", None),
    # tags: word characters, "." and "-" after the first, uppercase allowed
    ("app:V1.0-rc_1", "docker.io", "library/app", "V1.0-rc_1", None),
    ("app:_x", "docker.io", "library/app", "_x", None),
    ("app:" + "t" * 128, "docker.io", "library/app", "t" * 128, None),
    # docker's quirks, kept: a lone "localhost:5000" is the image "localhost" with tag "5000",
    # and a bare single component is always a Docker Hub official image, dots and all
    ("localhost:5000", "docker.io", "library/localhost", "5000", None),
    ("example.com", "docker.io", "library/example.com", "latest", None),
    # a first component without ".", ":" or uppercase is a namespace, not a registry
    ("myregistry/app", "docker.io", "myregistry/app", "latest", None),
]


@pytest.mark.parametrize(("text", "registry", "path", "tag", "digest"), VALID)
def test_valid_references(
    text: str, registry: str, path: str, tag: str | None, digest: str | None
) -> None:
    assert parse_reference(text) == Reference(registry, path, tag, digest)


# (input, what the message must say)
INVALID = [
    ("", "it is empty"),
    ("Nginx:1", "repository name must be lowercase"),
    ("docker.io/User/app", "repository name must be lowercase"),
    ("host:5000/App", "repository name must be lowercase"),
    ("Foo/bar", 'registry host "Foo" must be lowercase'),
    ("Registry.Example.com/app", "must be lowercase"),
    ("a" * 64, "image ID"),
    (":tag", "repository name is missing"),
    (f"@{SHA256}", "repository name is missing"),
    ("nginx:", "tag is empty"),
    ("nginx:.x", 'invalid tag ".x"'),
    ("nginx:-x", 'invalid tag "-x"'),
    ("nginx:a+b", 'invalid tag "a+b"'),
    ("app:" + "t" * 129, "tag is longer than 128"),
    # a "." in the first component makes it a registry, where "_" is not allowed
    ("a.b_c/d", 'invalid registry host "a.b_c"'),
    ("nginx:1:2", 'invalid path component "nginx:1"'),
    ("a//b", "empty path component"),
    ("a/b/", "empty path component"),
    ("host.com/", "empty path component"),
    ("-a/b", 'invalid path component "-a"'),
    ("a_/b", 'invalid path component "a_"'),
    ("a___b", 'invalid path component "a___b"'),
    ("a..b", 'invalid path component "a..b"'),
    ("-host.com/a", 'invalid registry host "-host.com"'),
    ("host.com:port/a", 'invalid registry host "host.com:port"'),
    ("[::1/a", 'invalid registry host "[::1"'),
    ("host_1.com/a", 'invalid registry host "host_1.com"'),
    ("nginx:1 ", "whitespace"),
    (" nginx", "whitespace"),
    ("nginx\n", "control characters"),
    ("repo@", "not of the form <algorithm>:<hex>"),
    ("repo@sha256", "not of the form <algorithm>:<hex>"),
    ("repo@sha256:abc", "a sha256 digest is 64 lowercase hexadecimal characters"),
    ("repo@sha256:" + "A" * 64, "a sha256 digest is 64 lowercase hexadecimal characters"),
    ("repo@sha256:" + "g" * 64, "a sha256 digest is 64 lowercase hexadecimal characters"),
    ("repo@sha256:" + "a" * 65, "a sha256 digest is 64 lowercase hexadecimal characters"),
    ("repo@sha512:" + "a" * 64, "a sha512 digest is 128 lowercase hexadecimal characters"),
    ("repo@sha384:" + "a" * 96, 'unsupported digest algorithm "sha384"'),
    ("repo@md5:" + "a" * 32, 'unsupported digest algorithm "md5"'),
    ("repo@1sha:" + "a" * 64, "malformed algorithm"),
    (f"repo@{SHA256}@{SHA256}", "a sha256 digest is 64"),
    ("registry.example.com/" + "a" * 235, "longer than 255 characters"),
]


@pytest.mark.parametrize(("text", "problem"), INVALID)
def test_invalid_references(text: str, problem: str) -> None:
    with pytest.raises(InvalidReference) as raised:
        parse_reference(text)
    message = str(raised.value)
    assert message.startswith("invalid image reference ")
    assert problem in message


def test_message_quotes_the_input_as_given() -> None:
    with pytest.raises(InvalidReference) as raised:
        parse_reference("Nginx:1")
    assert (
        str(raised.value) == 'invalid image reference "Nginx:1": repository name must be lowercase'
    )


def test_message_escapes_and_cuts_hostile_input() -> None:
    with pytest.raises(InvalidReference) as raised:
        parse_reference("app\n" + "x" * 5000)
    message = str(raised.value)
    assert "\n" not in message
    assert len(message) < 500


def test_name_length_limit_counts_registry_and_path() -> None:
    registry = "registry.example.com"
    longest = registry + "/" + "a" * (255 - len(registry) - 1)
    assert parse_reference(longest).repository == longest
    with pytest.raises(InvalidReference, match="longer than 255"):
        parse_reference(longest + "a")


def test_reference_forms() -> None:
    tagged = parse_reference("nginx:1.25")
    assert tagged.repository == tagged.gun == "docker.io/library/nginx"
    assert str(tagged) == "docker.io/library/nginx:1.25"
    assert tagged.tagged_name == "docker.io/library/nginx:1.25"
    assert tagged.familiar == "nginx:1.25"
    assert tagged.pinned(SHA256) == f"docker.io/library/nginx@{SHA256}"

    digested = parse_reference(f"host:5000/a/b@{SHA256}")
    assert str(digested) == f"host:5000/a/b@{SHA256}"
    assert digested.tagged_name is None
    assert digested.familiar == f"host:5000/a/b@{SHA256}"

    both = parse_reference(f"user/app:v1@{SHA256}")
    assert str(both) == f"docker.io/user/app:v1@{SHA256}"
    assert both.familiar == f"user/app:v1@{SHA256}"


@pytest.mark.parametrize(
    ("text", "familiar"),
    [
        ("nginx", "nginx:latest"),
        ("docker.io/library/nginx:1", "nginx:1"),
        ("docker.io/user/app:1", "user/app:1"),
        # only a single component under library/ is shortened, as docker does
        ("docker.io/library/a/b:1", "library/a/b:1"),
        ("quay.io/library/nginx:1", "quay.io/library/nginx:1"),
    ],
)
def test_familiar(text: str, familiar: str) -> None:
    assert parse_reference(text).familiar == familiar


@pytest.mark.parametrize("text", ["nginx", "nginx:1", f"a/b:c@{SHA256}", f"h:1/x@{SHA512}"])
def test_normalised_form_round_trips(text: str) -> None:
    reference = parse_reference(text)
    assert parse_reference(str(reference)) == reference
    assert parse_reference(reference.familiar) == reference


def test_pinned_rejects_a_malformed_digest() -> None:
    with pytest.raises(InvalidReference, match="invalid digest"):
        parse_reference("nginx").pinned("sha256:nothex")


def test_reference_is_frozen() -> None:
    reference = parse_reference("nginx")
    with pytest.raises(AttributeError):
        reference.tag = "other"  # type: ignore[misc]


def test_parse_digest() -> None:
    assert parse_digest(SHA256) == ("sha256", SHA256.split(":")[1])
    assert parse_digest(SHA512) == ("sha512", SHA512.split(":")[1])
    for bad, problem in [
        ("sha256", "not of the form"),
        ("sha1:" + "a" * 40, 'unsupported digest algorithm "sha1"'),
        ("sha256:" + "a" * 63, "64 lowercase hexadecimal"),
    ]:
        with pytest.raises(InvalidReference, match=problem) as raised:
            parse_digest(bad)
        assert str(raised.value).startswith("invalid digest ")


def test_parse_repository() -> None:
    assert parse_repository("nginx") == "docker.io/library/nginx"
    assert parse_repository("host:5000/a/b") == "host:5000/a/b"
    with pytest.raises(InvalidReference, match="has no tag"):
        parse_repository("nginx:1")
    with pytest.raises(InvalidReference, match="has no digest"):
        parse_repository(f"nginx@{SHA256}")
    with pytest.raises(InvalidReference, match="lowercase"):
        parse_repository("Nginx")


def test_parse_registry() -> None:
    for good in ["docker.io", "127.0.0.1:5000", "localhost", "[::1]:5000", "my-host"]:
        assert parse_registry(good) == good
    for bad, problem in [
        ("index.docker.io", "normalised to 'docker.io'"),
        ("Docker.io", "must be lowercase"),
        ("", "empty"),
        ("host/path", "invalid registry host"),
        ("https://host", "invalid registry host"),
    ]:
        with pytest.raises(InvalidReference, match=problem):
            parse_registry(bad)


@pytest.mark.parametrize(
    ("component", "is_registry"),
    [
        ("localhost", True),
        ("example.com", True),
        ("host:5000", True),
        ("Upper", True),
        ("user", False),
        ("local-host", False),
    ],
)
def test_looks_like_registry(component: str, is_registry: bool) -> None:
    assert looks_like_registry(component) is is_registry

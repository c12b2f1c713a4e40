import re
import string
import textwrap


def main(x):
    name, value = "pi", 3.14159
    return {
        "fstring": f"{name!r}={value:.3f} {value:>10.2f}|{42:08b}|{255:#x}|{1234567:,}",
        "percent": "%s=%5.2f %d%% %r" % (name, value, 50, [1]),
        "format": "{0}-{1}-{0} {key:^7}".format("a", "b", key="mid"),
        "methods": ["  Hello World ".strip().lower(), "a,b,,c".split(","), "-".join("abc"), "hello".title(), "x".zfill(4), "abcabc".replace("b", "B", 1), "Straße".casefold()],
        "re": re.findall(r"(\w+)@(\w+)\.com", "a@b.com, c@d.com"),
        "re_sub": re.sub(r"\d+", lambda m: str(int(m.group()) * 2), "a1b22c333"),
        "re_groups": re.match(r"(?P<year>\d{4})-(?P<month>\d{2})", "2024-05-01").groupdict(),
        "re_split": re.split(r"[;,\s]+", "a; b,c  d"),
        "template": string.Template("$who likes $what").substitute(who="tim", what="pie"),
        "constants": [string.ascii_lowercase[:5], string.digits, string.punctuation[:5]],
        "textwrap": textwrap.wrap("The quick brown fox jumps over the lazy dog", width=12),
        "dedent": textwrap.dedent("    a\n      b\n"),
        "unicode": ["héllo ✓ 𝄞"[::-1], len("𝄞"), "ÀÉÎ".lower(), ord("€"), chr(0x1F600)],
        "bytes": ["héllo".encode("utf-8").hex(), b"abc".decode(), bytes([65, 66]).decode()],
    }

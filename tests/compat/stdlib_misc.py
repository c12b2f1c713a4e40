import base64
import datetime
import hashlib
import json
import struct
import unicodedata


def main(x):
    d = datetime.date(2024, 2, 28) + datetime.timedelta(days=2)
    dt = datetime.datetime(2024, 1, 1, 12, 30) - datetime.datetime(2023, 12, 31, 23, 0)
    return {
        "json": [json.dumps({"b": [1, 2.5, None, True], "a": "é"}, sort_keys=True), json.loads('{"x": [1, {"y": null}]}'), json.dumps([1, 2], indent=2)],
        "datetime": [d.isoformat(), d.weekday(), dt.total_seconds(), datetime.date(2024, 3, 1).strftime("%Y/%m/%d %A"), datetime.datetime.strptime("2024-05-06 07:08", "%Y-%m-%d %H:%M").isoformat()],
        "hashlib": [hashlib.sha256(b"abc").hexdigest(), hashlib.md5(b"abc").hexdigest(), hashlib.sha1(b"").hexdigest()],
        "base64": [base64.b64encode(b"hello world").decode(), base64.b64decode("aGk=").decode(), base64.urlsafe_b64encode(b"\xff\xfe").decode()],
        "struct": [list(struct.unpack("<IhB", struct.pack("<IhB", 7, -2, 255))), struct.calcsize(">qd")],
        "unicodedata": [unicodedata.name("é"), unicodedata.category("A"), unicodedata.normalize("NFD", "é") == "e\u0301"],
        "input": x,
    }

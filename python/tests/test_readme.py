"""The README's Python blocks run as written."""

import re

from conftest import ROOT


def test_the_readme_python_blocks_run():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Python\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert blocks, "the README's Python section has a python block"
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {"__name__": "readme"})

"""Build hook: the sample data and the training configs ship inside the wheel (m3ref/data_samples,
m3ref/configs), while in a checkout they stay beside the package; `m3ref.assets` finds them in
both places. Everything else is declared in pyproject.toml."""
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
# What ships: every file under these folders that matches, relative to the repository root.
# data_samples/m3-mini/ (a trained small model in the official layout) ships when it is there.
SHIPPED = {
    "data_samples": ["README.md", "tokenizer/*", "source/*", "train/**/*.jsonl", "eval/**/*", "m3-mini/**/*"],
    "configs": ["**/*.yaml"],
}


def shipped_files():
    """(source, path inside the package) of every shipped file, sorted."""
    files = set()
    for folder, patterns in SHIPPED.items():
        for pattern in patterns:
            files |= {p for p in (ROOT / folder).glob(pattern) if p.is_file() and "__pycache__" not in p.parts}
    return [(p, p.relative_to(ROOT)) for p in sorted(files)]


class build_py_with_assets(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):  # an editable install reads them from the checkout
            return
        for source, relative in shipped_files():
            target = Path(self.build_lib) / "m3ref" / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            self.copy_file(str(source), str(target))


setup(cmdclass={"build_py": build_py_with_assets})

"""The repository layout: every documented script runs by path and as a module, and the inference
package (`dbeta/`) does not import the training code or training-only packages."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Every script the README and docs/ tell users to run.
SCRIPTS = [
    "train/pretrain.py",
    "train/pretraining/n3s.py",
    "train/demo/make_demo_corpus.py",
    "train/demo/build_demo_tokenizer.py",
    "train/demo/real_ecg.py",
    "train/data/prepare_mimic_iv_ecg.py",
    "train/evaluation/evaluate.py",
    "train/conversion/convert_original_checkpoint.py",
]
TRAINING_ONLY = {"sklearn", "datasets", "accelerate", "pandas", "tensorboard"}


def module_name(script: str) -> str:
    return "dbeta." + script.removesuffix(".py").replace("/", ".")


def test_every_script_runs_by_path_and_as_a_module(tmp_path):
    # All at once (each start imports torch and transformers), from a folder outside the checkout.
    commands = {}
    for script in SCRIPTS:
        commands[f"python {script}"] = [sys.executable, str(ROOT / script), "--help"]
        commands[f"python -m {module_name(script)}"] = [sys.executable, "-m", module_name(script), "--help"]
    running = {
        name: subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name, command in commands.items()
    }
    failures = {}
    for name, process in running.items():
        out, err = process.communicate(timeout=300)
        if process.returncode != 0 or "usage:" not in out:
            failures[name] = err.strip().splitlines()[-1:] if err.strip() else out[:200]
    assert not failures, failures


def test_the_documented_scripts_exist_and_are_named_in_the_docs():
    documented = (ROOT / "README.md").read_text() + "".join(path.read_text() for path in (ROOT / "docs").glob("*.md"))
    for script in SCRIPTS:
        assert (ROOT / script).is_file(), script
    # Every `train/...py` path the docs name is a file of the checkout.
    import re

    named = set(re.findall(r"train/[\w/]+\.py", documented))
    missing = sorted(path for path in named if not (ROOT / path).is_file())
    assert not missing, missing


@pytest.mark.parametrize("path", sorted((ROOT / "dbeta").glob("*.py")), ids=lambda path: path.name)
def test_the_inference_package_imports_no_training_code(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module)
    training = sorted(name for name in imported if name.startswith("dbeta.train") or name.split(".")[0] in TRAINING_ONLY)
    assert not training, f"{path.name} imports {training}"

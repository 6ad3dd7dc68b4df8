"""Repository-level promises: install rules, the README's test command, cheap imports."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The library proper: its top level and its subpackages networks/ (with networks/speech/), svd/ and
# media/ (train/ and synth/ are tools with imports of their own).
LIBRARY_FILES = sorted(path for folder in ("", "networks", "networks/speech", "svd", "media")
                       for path in (ROOT / "emotivetalk_core" / folder).glob("*.py"))


def _requirements(name):
    lines = (ROOT / name).read_text().splitlines()
    return [line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()]


def test_runtime_requirements_leave_comfyuis_torch_and_numpy_alone():
    for requirement in _requirements("requirements.txt"):
        name = re.split(r"[<>=!~\[; ]", requirement)[0].lower()
        assert name not in {"torch", "torchvision", "torchaudio"}, requirement
        # Lower bounds; an upper cap only where a newer major lacks what we use (OpenCV 5: no Haar cascades).
        assert "==" not in requirement and "<=" not in requirement, f"no pins: {requirement}"
        assert "<" not in requirement or name == "opencv-python-headless", f"lower bounds only: {requirement}"
        assert name not in {"mediapipe"}, f"{requirement} pins numpy<2 and breaks ComfyUI installs"
        assert not (name == "numpy" and "<" in requirement), requirement


def test_registry_metadata_lists_the_runtime_requirements():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["dependencies"] == _requirements("requirements.txt")
    comfy = project["tool"]["comfy"]
    assert comfy["PublisherId"] and comfy["DisplayName"]
    assert project["project"]["urls"]["Repository"].startswith("https://github.com/")
    assert all((ROOT / path).exists() for path in comfy["includes"])


def test_dev_requirements_are_pinned():
    for requirement in _requirements("requirements-dev.txt"):
        assert "==" in requirement, requirement


def test_ci_runs_exactly_the_readme_test_command():
    ci_lines = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if "pytest" in line]
    assert len(ci_lines) == 1
    assert ci_lines[0].strip() in (ROOT / "README.md").read_text()


def test_importing_the_library_does_not_import_heavy_packages():
    modules = [".".join(p.relative_to(ROOT).with_suffix("").parts) for p in LIBRARY_FILES if p.stem != "__main__"]
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in modules)
        + "heavy = [m for m in ('diffusers', 'transformers', 'librosa', 'av', 'cv2', 'comfy') if m in sys.modules]\n"
        + "print(','.join(heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "", f"imported at module level: {result.stdout.strip()}"


def test_library_imports_itself_relatively():
    """ComfyUI loads the pack as a package named after its folder, where ``emotivetalk_core`` is
    not importable by that name: inside the library every import of itself must be relative."""
    offenders = [f"{path.relative_to(ROOT)}: {line.strip()}" for path in LIBRARY_FILES
                 for line in path.read_text().splitlines()
                 if re.match(r"\s*(from|import)\s+emotivetalk_core\b", line)]
    assert not offenders, offenders


def test_node_reference_is_up_to_date():
    result = subprocess.run([sys.executable, "scripts/node_reference.py", "--check"], check=False, cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_every_case_in_reliability_md_names_a_test_that_exists():
    """docs/RELIABILITY.md lists each reliability case with the test that checks it: at least 80,
    and no row may point at a test that was renamed or deleted."""
    import ast

    rows = [line for line in (ROOT / "docs" / "RELIABILITY.md").read_text().splitlines() if re.match(r"\|\s*\d+\s*\|", line)]
    named = [re.search(r"tests/(\w+)\.py::(\w+)", row) for row in rows]
    assert len(rows) >= 80 and all(named), [row for row, match in zip(rows, named) if not match][:3]
    defined = {}
    for match in named:
        module = match[1]
        if module not in defined:
            tree = ast.parse((ROOT / "tests" / f"{module}.py").read_text())
            defined[module] = {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}
    missing = sorted({f"{m[1]}::{m[2]}" for m in named if m[2] not in defined[m[1]]})
    assert not missing, f"docs/RELIABILITY.md names tests that do not exist: {missing}"


def test_the_tests_run_in_a_checkout_named_like_the_pack(tmp_path):
    """pytest imports the pack's root ``__init__.py``; in a folder named ``ComfyUI-EmotiveTalk``
    (no Python identifier, so no package) that import must not fail every test."""
    import shutil

    checkout = tmp_path / "ComfyUI-EmotiveTalk"
    (checkout / "tests").mkdir(parents=True)
    for name in ("__init__.py", "pyproject.toml"):
        shutil.copy(ROOT / name, checkout / name)
    (checkout / "tests" / "test_one.py").write_text("def test_one():\n    assert True\n")
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=checkout,
                            capture_output=True, text=True)
    assert result.returncode == 0 and "1 passed" in result.stdout, result.stdout + result.stderr


def test_every_shipped_workflow_comes_in_both_formats_with_a_thumbnail_fixed_seeds_and_a_readme_line():
    """workflows/*.json (UI) and workflows/api/*.json pair up, each has its Templates thumbnail and a
    line in both READMEs, its pack nodes exist, and no seed is left to randomize."""
    import json

    import nodes

    ui = sorted(path.stem for path in (ROOT / "workflows").glob("*.json"))
    assert ui and ui == sorted(path.stem for path in (ROOT / "workflows" / "api").glob("*.json"))
    readmes = (ROOT / "README.md").read_text() + (ROOT / "workflows" / "README.md").read_text()
    for name in ui:
        assert (ROOT / "workflows" / f"{name}.jpg").is_file(), name
        assert readmes.count(f"| `{name}` |") == 2, name
        api = json.loads((ROOT / "workflows" / "api" / f"{name}.json").read_text())
        unknown = {node["class_type"] for node in api.values()
                   if node["class_type"].startswith("EmotiveTalk") and node["class_type"] not in nodes.NODE_CLASS_MAPPINGS}
        assert not unknown, (name, unknown)
        widgets = [value for node in json.loads((ROOT / "workflows" / f"{name}.json").read_text())["nodes"]
                   for value in node.get("widgets_values") or ()]
        assert "randomize" not in widgets, name


def test_every_ui_workflow_is_its_api_workflow():
    """Each shipped UI workflow has its API twin's nodes, links and, for the pack's nodes, widget
    values: a fix made to one format and not the other would make the two run differently."""
    import json

    import nodes

    def widgets(class_type):
        """(name, default) of each widget in the frontend's order; None for control_after_generate."""
        spec = nodes.NODE_CLASS_MAPPINGS[class_type].INPUT_TYPES()
        for name, (kind, *options) in [*spec["required"].items(), *spec.get("optional", {}).items()]:
            if isinstance(kind, list) or kind in {"INT", "FLOAT", "STRING", "BOOLEAN"}:
                yield name, (options[0] if options else {}).get("default")
                if name in {"seed", "noise_seed"}:
                    yield None, None

    for path in sorted((ROOT / "workflows").glob("*.json")):
        ui, api = json.loads(path.read_text()), json.loads((ROOT / "workflows" / "api" / path.name).read_text())
        assert {str(node["id"]): node["type"] for node in ui["nodes"]} == {k: v["class_type"] for k, v in api.items()}, path.name
        origin = {link[0]: (str(link[1]), link[2]) for link in ui["links"]}
        ui_links = {(*origin[slot["link"]], str(node["id"]), slot["name"])
                    for node in ui["nodes"] for slot in node.get("inputs", []) if slot.get("link") is not None}
        api_links = {(*value, node_id, name) for node_id, node in api.items() for name, value in node["inputs"].items()
                     if isinstance(value, list)}
        assert ui_links == api_links, (path.name, ui_links ^ api_links)
        for node in ui["nodes"]:
            if node["type"] in nodes.NODE_CLASS_MAPPINGS:
                inputs = api[str(node["id"])]["inputs"]
                for (name, default), shown in zip(widgets(node["type"]), node.get("widgets_values") or []):
                    if name is not None and not isinstance(inputs.get(name), list):  # a linked widget shows its default
                        assert inputs.get(name, default) == shown, (path.name, node["type"], name)

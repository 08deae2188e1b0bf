"""The 3D Slicer module's files, checked without Slicer: syntax, .ui, bindings, imports, install.

The Widget cannot run here (no Slicer Qt); these checks catch what would break it at load time.
The Logic itself is tested on real MRML by tests/slicer (``bash .ci/test-slicer``).
"""

from __future__ import annotations

import ast
import importlib.util
import py_compile
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXTENSION = ROOT / "slicer_module"
MODULE = EXTENSION / "FMSeg"
LIB = MODULE / "FMSegLib"
UI = MODULE / "Resources" / "UI" / "FMSeg.ui"
PY_FILES = sorted(EXTENSION.rglob("*.py"))


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"fmseg_slicer_{name}", LIB / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _top_level_imports(path: Path) -> set[str]:
    """Root names of the modules imported at module level (not inside functions)."""
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def _all_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module)
    return names


def _ui_widgets() -> dict[str, ET.Element]:
    return {w.get("name"): w for w in ET.parse(UI).getroot().iter("widget")}


def _parameter_fields() -> dict[str, ast.AnnAssign]:
    tree = ast.parse((MODULE / "FMSeg.py").read_text())
    cls = next(
        n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "FMSegParameterNode"
    )
    return {n.target.id: n for n in cls.body if isinstance(n, ast.AnnAssign)}


def test_module_files_exist():
    assert {p.name for p in PY_FILES} >= {"FMSeg.py", "logic.py", "mrml.py", "worker.py"}
    for path in ("CMakeLists.txt", "FMSeg/CMakeLists.txt", "FMSeg/Resources/requirements.txt"):
        assert (EXTENSION / path).is_file(), path
    assert (MODULE / "Resources/Icons/FMSeg.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("path", PY_FILES, ids=lambda p: str(p.relative_to(EXTENSION)))
def test_py_compile(path, tmp_path):
    py_compile.compile(str(path), cfile=str(tmp_path / "out.pyc"), doraise=True)


def test_cmake_lists_every_script_and_resource():
    text = (MODULE / "CMakeLists.txt").read_text().replace("${MODULE_NAME}", "FMSeg")
    listed = set(re.findall(r"^\s+(\S+\.(?:py|png|ui|txt))\s*$", text, re.M))
    shipped = {str(p.relative_to(MODULE)) for p in MODULE.rglob("*") if p.is_file()}
    shipped = {p for p in shipped if "__pycache__" not in p and not p.endswith("CMakeLists.txt")}
    assert listed == shipped
    top = (EXTENSION / "CMakeLists.txt").read_text()
    assert re.search(r'EXTENSION_DEPENDS "PyTorch"', top) and "add_subdirectory(FMSeg)" in top


def test_ui_parses_and_binds_every_parameter():
    root = ET.parse(UI).getroot()
    assert root.tag == "ui" and root.find("widget").get("class") == "qMRMLWidget"
    bound = {}
    for widget in root.iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound[prop.find("string").text] = widget.get("class")
    assert set(bound) == set(_parameter_fields())
    # every MRML combo box gets the scene through the template's signal connection
    combos = {n for n, w in _ui_widgets().items() if w.get("class") == "qMRMLNodeComboBox"}
    receivers = {c.findtext("receiver") for c in root.iter("connection")}
    assert combos and combos <= receivers


def test_widget_uses_only_widgets_of_the_ui():
    used = set(re.findall(r"self\.ui\.(\w+)", (MODULE / "FMSeg.py").read_text()))
    used |= set(re.findall(r'"(\w+(?:Button|Bar|Label))"', (MODULE / "FMSeg.py").read_text()))
    assert used and used <= set(_ui_widgets())


def test_nothing_heavy_is_imported_when_slicer_loads_the_module():
    # Slicer imports FMSeg.py at startup, before the user clicked "Install fmseg".
    assert not _top_level_imports(MODULE / "FMSeg.py") & {"fmseg", "torch", "numpy"}
    for name in ("install", "choices", "__init__"):
        assert not _top_level_imports(LIB / f"{name}.py") & {"fmseg", "torch", "slicer", "qt"}


def test_logic_and_lib_are_gui_free():
    gui = {"qt", "ctk", "slicer.ScriptedLoadableModule", "slicer.parameterNodeWrapper"}
    for path in LIB.glob("*.py"):
        imports = _all_imports(path)
        assert not imports & gui, (path.name, imports & gui)
        assert "pip_install" not in path.read_text() or path.name == "install.py"


def test_core_coords_imports_numpy_only():
    assert _all_imports(ROOT / "core" / "fmseg" / "coords.py") <= {"__future__", "numpy"} | {
        "collections.abc",
        "typing",
    }


def test_requirements_match_the_core_dependencies():
    block = re.search(r"(?ms)^dependencies = \[(.*?)^\]", (ROOT / "pyproject.toml").read_text())
    deps = re.findall(r'"([^"]+)"', block.group(1))  # (tomllib needs Python 3.11)
    core = {re.split(r"[<>=!~ \[]", d)[0].lower() for d in deps} - {"torch"}
    install = _load("install")
    assert set(install.read_requirements()) == core


def test_install_commands_pin_torch_and_install_the_checkout(tmp_path):
    install = _load("install")
    assert install.checkout_root() == ROOT
    constraints = tmp_path / "c.txt"
    commands = install.pip_commands(constraints)
    assert commands[0][-2:] == ["-c", str(constraints)]
    assert commands[1] == ["--no-deps", "-e", str(ROOT)]
    assert len(commands) == 2  # the checkpoint is fetched by fmseg, not by a package
    assert install.pip_commands(None, source="fmseg.whl")[1] == ["--no-deps", "fmseg.whl"]
    assert install.torch_pin().startswith("torch==")
    with pytest.raises(RuntimeError, match="not inside an fmseg checkout"):
        install.pip_commands(None, module_dir=tmp_path / "a" / "b")


def test_menu_choices_exist_in_the_core():
    from fmseg.adapters.methods import METHODS
    from fmseg.incontext import BACKENDS, SAMPLERS
    from fmseg.registry import get_spec

    choices = _load("choices")
    assert set(choices.BACKENDS) <= set(BACKENDS)
    assert set(choices.SAMPLERS) <= set(SAMPLERS)
    assert sorted(choices.ADAPTER_METHODS) == sorted(METHODS)  # every method, each once
    assert [get_spec(b).kind for b in choices.ADAPTER_BASES] == ["promptable", "volumetric"]
    fields = _parameter_fields()
    menus = {
        "view": choices.VIEWS,
        "backend": choices.BACKENDS,
        "sampler": choices.SAMPLERS,
        "adapterMethod": choices.ADAPTER_METHODS,
        "adapterBase": choices.ADAPTER_BASES,
    }
    for name, menu in menus.items():
        assert "Choice" in ast.unparse(fields[name].annotation)
        assert ast.literal_eval(fields[name].value) in menu, name  # a valid default


def test_click_backends_are_those_the_core_corrects():
    from fmseg.incontext.correct import CLICK_BACKENDS, takes_clicks

    choices = _load("choices")
    assert choices.CLICK_BACKENDS == CLICK_BACKENDS and choices.BACKENDS[0] == "auto"
    assert [b for b in choices.BACKENDS if takes_clicks(b)] == list(CLICK_BACKENDS)

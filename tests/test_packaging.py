"""Packaging: the MPI from PyPI is an extra, so a site MPI stays in place on upgrade.

    $ python -m pytest -q tests/test_packaging.py
"""
import ast
import re

from conftest import ROOT


def setup_arguments() -> dict:
    """The literal keyword arguments of setup.py's setup() call (read, not run: newer
    Pythons have no distutils and venvs no setuptools)."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    call = next(node for node in ast.walk(tree)
                if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "setup")
    found = {}
    for keyword in call.keywords:
        try:
            found[keyword.arg] = ast.literal_eval(keyword.value)
        except ValueError:
            continue  # computed (version, long_description)
    return found


def requirement_names(requirements) -> set:
    return {re.split(r"[ <>=!~;\[]", r, maxsplit=1)[0].lower() for r in requirements}


def test_mpich_wheel_is_an_extra_not_a_dependency():
    args = setup_arguments()
    always = requirement_names(args["install_requires"])
    assert "mpich" not in always and "mpi4py" in always
    assert requirement_names(args["extras_require"]["mpich"]) == {"mpich"}
    for name, requirements in args["extras_require"].items():
        if name != "mpich":
            assert "mpich" not in requirement_names(requirements), name


def test_scripts_that_launch_mpiexec_install_the_mpich_extra():
    ci = (ROOT / ".ci" / "run").read_text()
    digits = (ROOT / "examples" / "digits.sh").read_text()
    assert "pip install -q -e '.[mpich,test]'" in ci
    assert "pip install -q -e '.[mpich]'" in digits


def test_ci_runs_the_readme_test_command_verbatim():
    """README's second command is what CI runs, so the two cannot drift apart."""
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", readme, flags=re.S)
    test_command = next(line for block in blocks for line in block.splitlines()
                        if "pytest" in line)
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_command.strip() in [line.strip() for line in ci_lines]

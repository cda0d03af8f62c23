"""The package's layers depend one way: core <- commands <- cli. Read from the source (every
import, function-local ones included), so a lazy import cannot hide a dependency."""

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "alexnet_jax"
# The command layer: what parses arguments, prints, and drives the core.
COMMANDS = {"cli", "params_cli", "arguments", "experiments", "bench", "compare", "prepare",
            "predict", "gpu_check"}


def module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
  """alexnet_jax module -> the alexnet_jax modules it imports (anywhere in its source)."""
  modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
  graph = {}
  for name, path in modules.items():
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Import):
        targets = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom) and node.module:
        # `from package import submodule` depends on the submodule; `from module import name`
        # on the module.
        targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules
                   else node.module for a in node.names]
      else:
        continue
      found.update(t for t in targets if t in modules and t != name)
    graph[name] = found
  return graph


def layer(module: str) -> str:
  top = module.split(".")[1] if "." in module else ""
  return "command" if top in COMMANDS else "core"


def test_the_core_never_imports_the_command_layer_at_any_depth():
  graph = imports()
  for module in graph:
    if layer(module) != "core":
      continue
    seen, todo = set(), [module]
    while todo:
      for dep in graph[todo.pop()]:
        if dep not in seen:
          seen.add(dep)
          todo.append(dep)
    assert not {d for d in seen if layer(d) == "command"}, module


def test_nothing_but_the_entry_points_imports_the_command_line():
  graph = imports()
  assert [m for m, deps in graph.items() if "alexnet_jax.cli" in deps] == []


def test_the_package_has_no_import_circle():
  graph = imports()
  state: dict[str, int] = {}

  def visit(module, path):
    state[module] = 1
    for dep in graph[module]:
      assert state.get(dep) != 1, " -> ".join(path + [dep])
      if dep not in state:
        visit(dep, path + [dep])
    state[module] = 2

  for module in graph:
    if module not in state:
      visit(module, [module])


def test_cpu_code_is_reached_only_through_the_backend_interface():
  """The model (and the rest of the package) asks `backend.ops` or `backend` for a layer or a
  start-up setting; only the backend package itself imports what is under backend/cpu."""
  graph = imports()
  cpu = {m for m in graph if m.startswith("alexnet_jax.backend.cpu")}
  assert cpu, "backend/cpu holds the CPU-only modules"
  outside = {m: sorted(deps & cpu) for m, deps in graph.items()
             if not m.startswith("alexnet_jax.backend") and deps & cpu}
  assert outside == {}
  assert "alexnet_jax.backend.ops" in graph["alexnet_jax.model"]


def external_imports(module: str) -> set[str]:
  """The top-level names of the packages outside alexnet_jax that `module` imports."""
  path = PACKAGE.parent / (module.replace(".", "/") + ".py")
  if not path.exists():
    path = PACKAGE.parent / module.replace(".", "/") / "__init__.py"
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      found.update(a.name.split(".")[0] for a in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      found.add(node.module.split(".")[0])
  return found - {"alexnet_jax"}


def test_the_start_up_settings_import_no_jax():
  """`backend.keep_host_memory` and `backend.start_up` run before JAX starts its threads and
  reads XLA_FLAGS: the package's __init__ and all it imports leave JAX unimported."""
  graph = imports()
  seen, todo = {"alexnet_jax.backend"}, ["alexnet_jax.backend"]
  while todo:
    for dep in graph[todo.pop()]:
      if dep not in seen:
        seen.add(dep)
        todo.append(dep)
  for module in seen:
    assert not external_imports(module) & {"jax", "jaxlib", "flax", "numpy"}, module
